"""scarls: installable with pip (`pip install -e .`) and as an ament_python package (colcon)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'scarls'
NODES = ('driver', 'actor', 'teleop', 'scheduler', 'learner')

setup(
    name=PACKAGE,
    version='0.1.0',
    description='ScaRLS: a ROS 2 middleware that lets a fleet of robot arms learn while working.',
    license='Apache-2.0',
    python_requires='>=3.10',
    package_dir={'': 'src'},
    packages=find_packages('src'),
    # No install_requires: the ROS 2 side (rclpy, messages) comes from the ROS installation or
    # requirements.txt. The data library alone (scarls.episodes: the Zarr episode format, the
    # training dataset, the dataset tools) installs with `pip install scarls[data]` and imports
    # no ROS; install the torch build you want first (an unpinned torch may pull a CUDA build).
    extras_require={
        # (OpenCV: the `scarls` command line builds every command's parser, the simulator's too)
        'data': ['numpy>=1.26', 'zarr>=3.1,<4', 'numcodecs>=0.16', 'imagecodecs>=2024.12.30',
                 'torch>=2.4', 'opencv-python-headless>=4.9'],
        # compressed (video) episodes, and `scarls dataset import-lerobot`
        'video': ['av>=14'],
        'lerobot': ['pyarrow>=15', 'av>=14'],
    },
    # the dashboard's page (read through Path(__file__): the package must stay a directory)
    package_data={'scarls.dashboard': ['static/*', 'static/vendor/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.rviz')
         + glob('config/*.xml') + glob('config/*.json')),
        ('share/' + PACKAGE + '/config/robots', glob('config/robots/*.yaml')),
    ],
    zip_safe=False,
    entry_points={
        'console_scripts': [
            'scarls = scarls.cli:main',
            'dashboard = scarls.dashboard:main',
            'camera = scarls.camera.capture:main',
            'foxglove = scarls.foxglove:main',
            'clock = scarls.sim.clock_node:main',
            *[f'{node} = scarls.{node}.node:main' for node in NODES],
        ],
    },
)

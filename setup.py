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
            *[f'{node} = scarls.{node}.node:main' for node in NODES],
        ],
    },
)

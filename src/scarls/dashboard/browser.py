"""Open the dashboard in a headless Chromium (Debian's chromium + chromedriver, driven by
selenium): what the browser test and the cost benchmark look through. Selenium is given both
paths, so it never downloads a driver; the flags keep Chromium off the network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _find(env: str, names: tuple[str, ...], default: str, env_dir: str | None = None) -> str:
    """A browser program: $<env> if set, else the first of ``names`` on PATH (or in the
    directory $<env_dir>, where GitHub's runners keep their chromedriver), else ``default``."""
    if os.environ.get(env):
        return os.environ[env]
    path = os.environ.get('PATH', '')
    if env_dir and os.environ.get(env_dir):
        path = os.environ[env_dir] + os.pathsep + path
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return default


CHROMIUM = _find('SCARLS_CHROMIUM', ('chromium', 'chromium-browser', 'google-chrome',
                                     'google-chrome-stable'), '/usr/bin/chromium')
CHROMEDRIVER = _find('SCARLS_CHROMEDRIVER', ('chromedriver',), '/usr/bin/chromedriver',
                     env_dir='CHROMEWEBDRIVER')
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync')


def headless_chromium(profile: Path, window: tuple[int, int] = (1280, 1600)):
    """A selenium WebDriver on a fresh headless Chromium with its profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f'--window-size={window[0]},{window[1]}',
                 f'--user-data-dir={profile}'):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

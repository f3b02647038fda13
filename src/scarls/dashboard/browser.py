"""Open the dashboard in a headless Chromium (Debian's chromium + chromedriver, driven by
selenium): what the browser test and the cost benchmark look through. Selenium is given both
paths, so it never downloads a driver; the flags keep Chromium off the network."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
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

"""User-Agent strings for the synthetic event stream (synth.py).

A device is a browser/OS family plus a release number that moves on with the calendar, so real
devices auto-update, new phones arrive on the latest release, and a targeted attacker can copy a
victim's family (or exact string). Strings follow today's reduced UAs (frozen OS tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import numpy as np

# Release 0 of every family is the one out on this day; others count releases from it.
RELEASE_EPOCH = datetime(2026, 1, 13)
_KEY_SPAN = 1024  # a UA key is family * _KEY_SPAN + release + _KEY_SPAN // 2

_WIN = "Windows NT 10.0; Win64; x64"
_MAC = "Macintosh; Intel Mac OS X 10_15_7"
_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_SAFARI = [f"{major}.{minor}" for major in (16, 17, 18, 26, 27, 28, 29) for minor in range(7)]


def _chrome(k: int) -> int:
    return 144 + k


def _firefox(k: int) -> int:
    return 147 + k


def _safari(k: int) -> str:
    return _SAFARI[int(np.clip(_SAFARI.index("26.3") + k, 0, len(_SAFARI) - 1))]


def _ios_token(k: int) -> str:
    version = _safari(k)  # iOS 26 froze the OS token at 18_6; older ones still report theirs
    return "18_6" if int(version.split(".")[0]) >= 26 else version.replace(".", "_")


@dataclass(frozen=True)
class Family:
    browser: str
    os: str
    mobile: bool
    share: float  # among desktops, or among phones
    period_days: int  # release cadence
    render: Callable[[int], str]


FAMILIES: tuple[Family, ...] = (
    Family("Chrome", "Windows", False, 0.40, 28, lambda k: (
        f"Mozilla/5.0 ({_WIN}) {_WEBKIT} Chrome/{_chrome(k)}.0.0.0 Safari/537.36")),
    Family("Edge", "Windows", False, 0.14, 28, lambda k: (
        f"Mozilla/5.0 ({_WIN}) {_WEBKIT} Chrome/{_chrome(k)}.0.0.0 Safari/537.36 "
        f"Edg/{_chrome(k)}.0.{3719 + 60 * k}.{(37 * k) % 80 + 12}")),
    Family("Firefox", "Windows", False, 0.07, 28, lambda k: (
        f"Mozilla/5.0 ({_WIN}; rv:{_firefox(k)}.0) Gecko/20100101 Firefox/{_firefox(k)}.0")),
    Family("Chrome", "Mac OS X", False, 0.12, 28, lambda k: (
        f"Mozilla/5.0 ({_MAC}) {_WEBKIT} Chrome/{_chrome(k)}.0.0.0 Safari/537.36")),
    Family("Safari", "Mac OS X", False, 0.13, 49, lambda k: (
        f"Mozilla/5.0 ({_MAC}) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        f"Version/{_safari(k)} Safari/605.1.15")),
    Family("Firefox", "Mac OS X", False, 0.03, 28, lambda k: (
        f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:{_firefox(k)}.0) Gecko/20100101 "
        f"Firefox/{_firefox(k)}.0")),
    Family("Chrome", "Linux", False, 0.06, 28, lambda k: (
        f"Mozilla/5.0 (X11; Linux x86_64) {_WEBKIT} Chrome/{_chrome(k)}.0.0.0 Safari/537.36")),
    Family("Firefox", "Ubuntu", False, 0.05, 28, lambda k: (
        f"Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:{_firefox(k)}.0) Gecko/20100101 "
        f"Firefox/{_firefox(k)}.0")),
    Family("Mobile Safari", "iOS", True, 0.45, 49, lambda k: (
        f"Mozilla/5.0 (iPhone; CPU iPhone OS {_ios_token(k)} like Mac OS X) AppleWebKit/605.1.15 "
        f"(KHTML, like Gecko) Version/{_safari(k)} Mobile/15E148 Safari/604.1")),
    Family("Chrome Mobile", "Android", True, 0.55, 28, lambda k: (
        f"Mozilla/5.0 (Linux; Android 10; K) {_WEBKIT} Chrome/{_chrome(k)}.0.0.0 "
        "Mobile Safari/537.36")),
)
MOBILE = np.array([f.mobile for f in FAMILIES])
IOS = next(i for i, f in enumerate(FAMILIES) if f.os == "iOS")
ANDROID = next(i for i, f in enumerate(FAMILIES) if f.os == "Android")
PERIOD = np.array([f.period_days for f in FAMILIES], dtype=np.int64)
_DESKTOP_P = np.array([0.0 if f.mobile else f.share for f in FAMILIES])
_DESKTOP_P /= _DESKTOP_P.sum()
_ALL_P = np.array([f.share for f in FAMILIES]) / sum(f.share for f in FAMILIES)


def release(family: np.ndarray, day: np.ndarray, phase: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """Release a device runs on `day` (days since RELEASE_EPOCH): it updates `phase` days after
    each release and stays `lag` releases behind (people who never restart their browser)."""
    return np.floor_divide(day - phase, PERIOD[family]) - lag


def ua_key(family: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Compact integer standing for one exact UA string (rendered once, at the end)."""
    k = np.clip(k, -_KEY_SPAN // 2, _KEY_SPAN // 2 - 1)
    return np.asarray(family, dtype=np.int64) * _KEY_SPAN + k + _KEY_SPAN // 2


def key_family(key: np.ndarray) -> np.ndarray:
    return np.asarray(key) // _KEY_SPAN


def key_release(key: np.ndarray) -> np.ndarray:
    return np.asarray(key) % _KEY_SPAN - _KEY_SPAN // 2


def desktop_families(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(len(FAMILIES), size=n, p=_DESKTOP_P)


def random_keys(n: int, today: int, rng: np.random.Generator) -> np.ndarray:
    """UAs an attacker tool picks: any family by market share, often an outdated release."""
    family = rng.choice(len(FAMILIES), size=n, p=_ALL_P)
    current = np.floor_divide(today, PERIOD[family])
    return ua_key(family, current - rng.integers(0, 15, size=n))


def render(keys: np.ndarray) -> np.ndarray:
    """UA keys to strings; -1 (no User-Agent) becomes None."""
    unique, inverse = np.unique(keys, return_inverse=True)
    strings = [None if k < 0 else FAMILIES[k // _KEY_SPAN].render(int(key_release(k))) for k in unique]
    return np.array(strings, dtype=object)[inverse]

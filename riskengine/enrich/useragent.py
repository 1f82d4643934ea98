"""Step 2b: User-Agent -> browser, OS and device type, through ``ua-parser``.

The parser (with its maintained regex set) does the matching; we only fold its
device family into the coarse device type the signals compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import ua_parser

_TABLETS = ("ipad", "tablet", "kindle", "galaxy tab", "nexus 7", "nexus 9", "nexus 10")
_MOBILE_OS = ("ios", "android", "windows phone", "blackberry os", "kaios", "symbian os")


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    browser: str = "Other"
    browser_version: str = ""
    os: str = "Other"
    os_version: str = ""
    device_type: str = "unknown"    # desktop | mobile | tablet | bot | unknown

    @property
    def browser_major(self) -> str:
        return f"{self.browser} {self.browser_version.split('.')[0]}".strip()


def _version(part: object) -> str:
    pieces = [getattr(part, name, None) for name in ("major", "minor", "patch")]
    return ".".join(p for p in pieces if p)


def _device_type(device_family: str, os_family: str, browser: str, raw: str) -> str:
    family, os_name = device_family.lower(), os_family.lower()
    if device_family == "Spider" or "bot" in browser.lower():
        return "bot"
    if any(t in family for t in _TABLETS) or (os_name == "android" and "mobile" not in raw.lower()):
        return "tablet"
    if os_name in _MOBILE_OS or family in ("iphone", "generic smartphone"):
        return "mobile"
    if os_name in ("windows", "mac os x", "linux", "ubuntu", "chrome os", "fedora", "debian"):
        return "desktop"
    return "unknown"


@lru_cache(maxsize=16384)
def parse_user_agent(raw: str) -> UserAgentInfo:
    """Parse once per distinct string: a user's UA rarely changes.

    >>> ua = parse_user_agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    ...                       "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36")
    >>> ua.browser, ua.browser_major, ua.os, ua.device_type
    ('Chrome', 'Chrome 120', 'Windows', 'desktop')
    """
    if not raw:
        return UserAgentInfo()
    result = ua_parser.parse(raw)
    browser = result.user_agent.family if result.user_agent else "Other"
    os_family = result.os.family if result.os else "Other"
    device = result.device.family if result.device else "Other"
    return UserAgentInfo(
        browser=browser,
        browser_version=_version(result.user_agent),
        os=os_family,
        os_version=_version(result.os),
        device_type=_device_type(device, os_family, browser, raw),
    )

"""Step 2c: named lists of addresses, networks and ASNs (allow, deny, anonymizers...), from files.

A list is one text file in the lists folder (``RISKENGINE_LISTS``): its name is the file's stem;
each line is an IP address, a CIDR range or ``AS<number>``; ``#`` starts a comment. A header line
``# role: <role>`` says what the engine itself does with it besides policy conditions:

- ``anonymizer``: Tor exits, hosting and VPN networks; a model signal with its own reason code;
- ``deny``: always denied; ``allow``: usable in policy rules (never an automatic allow);
- ``travel_exempt``: networks (mobile carriers, satellites, corporate proxies) whose addresses
  move too far too fast to mean anything: no impossible-travel signal from them.

Lookups are a binary search over merged ranges, so a list of 100k entries costs microseconds.
Files are re-read when they change (checked at most once per ``interval`` seconds); a list that
cannot be read keeps its previous contents, and the error is kept for ``/health``. Nothing is
fetched from the network: refresh the files with your own job (see ``lists/README.md``).

>>> lists = NamedLists.parse({"tor": ("# role: anonymizer", "185.220.101.0/24", "AS60729")})
>>> sorted(lists.match("185.220.101.7", None)), sorted(lists.match("8.8.8.8", 60729))
(['tor'], ['tor'])
>>> lists.with_role("anonymizer", lists.match("8.8.8.8", 60729))
True
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("riskengine.lists")
ROLES = ("anonymizer", "deny", "allow", "travel_exempt")
LIST_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ROLE = re.compile(r"^#\s*role:\s*([a-z_]+)\s*$")


class ListError(ValueError):
    """A line that is not an address, a range or an ASN: names the list, the line and the text."""


@dataclass(frozen=True)
class _Ranges:
    """Merged, sorted integer ranges of one address family, searched with bisect."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def of(cls, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> "_Ranges":
        merged = list(ipaddress.collapse_addresses(networks))
        return cls(tuple(int(n.network_address) for n in merged), tuple(int(n.broadcast_address) for n in merged))

    def __contains__(self, address: int) -> bool:
        at = bisect.bisect_right(self.starts, address) - 1
        return at >= 0 and address <= self.ends[at]


@dataclass(frozen=True)
class NamedList:
    name: str
    role: str | None
    v4: _Ranges
    v6: _Ranges
    asns: frozenset[int]
    size: int

    @classmethod
    def parse(cls, name: str, lines: Iterable[str]) -> "NamedList":
        if not LIST_NAME.match(name):
            raise ListError(f"list name {name!r}: use lowercase letters, digits, '-', '_' or '.'")
        role, v4, v6, asns, size = None, [], [], set(), 0
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if (found := _ROLE.match(line)) is not None:
                if found.group(1) not in ROLES:
                    raise ListError(f"{name} line {number}: unknown role {found.group(1)!r}; known: {', '.join(ROLES)}")
                role = found.group(1)
                continue
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            size += 1
            if line[:2].upper() == "AS" and line[2:].isdigit():
                asns.add(int(line[2:]))
                continue
            try:
                network = ipaddress.ip_network(line, strict=False)
            except ValueError:
                raise ListError(f"{name} line {number}: {line[:60]!r} is not an address, a CIDR range or AS<n>") from None
            (v4 if network.version == 4 else v6).append(network)
        return cls(name, role, _Ranges.of(v4), _Ranges.of(v6), frozenset(asns), size)

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, asn: int | None) -> bool:
        ranges = self.v4 if address.version == 4 else self.v6
        return int(address) in ranges or (asn is not None and asn in self.asns)


@dataclass
class NamedLists:
    """Every list of a folder; ``match`` says which lists an address (or its ASN) is on."""

    lists: dict[str, NamedList] = field(default_factory=dict)

    @classmethod
    def parse(cls, sources: Mapping[str, Iterable[str]]) -> "NamedLists":
        return cls({name: NamedList.parse(name, lines) for name, lines in sources.items()})

    def match(self, ip: str, asn: int | None) -> frozenset[str]:
        if not self.lists:
            return frozenset()
        address = ipaddress.ip_address(ip)
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return frozenset(name for name, named in self.lists.items() if named.contains(address, asn))

    def with_role(self, role: str, matched: frozenset[str]) -> bool:
        return any(self.lists[name].role == role for name in matched if name in self.lists)

    def roles(self, matched: frozenset[str]) -> tuple[tuple[str, str], ...]:
        """(name, role) of the matched lists that have a role: what the policy's decision reads."""
        return tuple(sorted((name, role) for name in matched if name in self.lists
                            and (role := self.lists[name].role) is not None))

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.lists))


class ListFolder:
    """The lists of one folder, re-read when a file changes; a broken file keeps its last good version."""

    def __init__(self, folder: Path | None, interval: float = 1.0) -> None:
        self.folder, self.interval = folder, interval
        self.current = NamedLists()
        self.error: str | None = None
        self._seen: dict[Path, float] = {}
        self._checked = float("-inf")
        self.poll(force=True)

    def poll(self, force: bool = False) -> NamedLists:
        """At most one directory scan per ``interval``: cheap enough for the request path."""
        now = time.monotonic()
        if self.folder is None or (not force and now - self._checked < self.interval):
            return self.current
        self._checked = now
        files = {p: p.stat().st_mtime for p in sorted(self.folder.glob("*.txt"))} if self.folder.is_dir() else {}
        if files == self._seen:
            return self.current
        lists, errors = dict(self.current.lists), []
        for gone in set(self._seen) - set(files):
            lists.pop(gone.stem, None)
        for path, mtime in files.items():
            if self._seen.get(path) == mtime:
                continue
            try:
                lists[path.stem] = NamedList.parse(path.stem, path.read_text(encoding="utf-8").splitlines())
            except (OSError, UnicodeDecodeError, ListError) as exc:
                errors.append(str(exc) if isinstance(exc, ListError) else f"{path.name}: {type(exc).__name__}")
        self.current, self._seen = NamedLists(lists), files
        self.error = "; ".join(errors) or None
        if errors:
            log.error("lists: kept the previous version of what could not be read: %s", self.error)
        return self.current

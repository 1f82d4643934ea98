"""Step 2a: IP address -> place and network, through geoip2 over MaxMind-format files.

The user's own GeoIP2/GeoLite2 City (and optional ASN) database is used when
configured; otherwise the GeoLite2-City file bundled by ``maxminddb-geolite2``.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import geoip2.database
import geoip2.errors
import maxminddb

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """Where an address is. ``known`` is False for private, reserved or unlisted ones."""

    known: bool
    country: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    accuracy_km: float = 0.0
    asn: int | None = None
    network: str = ""            # "AS<n>" with an ASN database, else the /16 or /48 prefix
    unknown_reason: str | None = None

    @property
    def has_coordinates(self) -> bool:
        return self.latitude is not None and self.longitude is not None


def bundled_city_db() -> Path:
    """The GeoLite2-City file shipped in the ``maxminddb-geolite2`` package."""
    from _maxminddb_geolite2 import geolite2_database

    return Path(geolite2_database())


def prefix_network(ip: str) -> str:
    """The coarse network used when no ASN database is configured.

    >>> prefix_network("81.167.144.58"), prefix_network("2001:db8:1:2::1")
    ('81.167.0.0/16', '2001:db8:1::/48')
    """
    address = ipaddress.ip_address(ip)
    length = 16 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{length}", strict=False))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance.

    >>> round(haversine_km(59.91, 10.75, -33.87, 151.21))  # Oslo -> Sydney
    15950
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class GeoLocator:
    """Looks addresses up; results are cached because a user's IPs repeat."""

    def __init__(self, city_db: Path | None = None, asn_db: Path | None = None,
                 cache_size: int = 65536) -> None:
        self.city_db = Path(city_db) if city_db else bundled_city_db()
        if not self.city_db.is_file():
            raise FileNotFoundError(f"GeoIP city database not found: {self.city_db}")
        # maxminddb (the reader geoip2 is built on) for the City file: its records as plain dicts,
        # without geoip2's model objects (a tree of them per lookup, a tenth of a busy /score)
        self._city = maxminddb.open_database(str(self.city_db))
        kind = self._city.metadata().database_type
        if "City" not in kind and "Enterprise" not in kind:
            raise ValueError(f"{self.city_db} is a {kind} database, not a City one")
        self._asn = geoip2.database.Reader(str(asn_db)) if asn_db else None
        #: when each database in use was built (Unix time, from its metadata): ``city``, ``asn``
        self.build_epochs = {"city": int(self._city.metadata().build_epoch),
                             **({"asn": int(self._asn.metadata().build_epoch)} if self._asn else {})}
        self.lookup = lru_cache(maxsize=cache_size)(self._lookup)

    @property
    def database_info(self) -> str:
        meta = self._city.metadata()
        return f"{meta.database_type} build {meta.build_epoch}"

    def _lookup(self, ip: str) -> GeoInfo:
        address = ipaddress.ip_address(ip)
        network = prefix_network(ip)
        if not address.is_global:
            reason = "private" if address.is_private else "reserved"
            return GeoInfo(known=False, network=network, unknown_reason=reason)
        asn = self._asn_of(ip)
        if asn is not None:
            network = f"AS{asn}"
        try:
            record = self._city.get(ip)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            return GeoInfo(known=False, asn=asn, network=network, unknown_reason="not_found")
        country = record.get("country", {}).get("iso_code")
        location = record.get("location", {})
        return GeoInfo(
            known=country is not None,
            country=country,
            city=record.get("city", {}).get("names", {}).get("en"),     # geoip2's name: the English one
            latitude=location.get("latitude"),
            longitude=location.get("longitude"),
            accuracy_km=float(location.get("accuracy_radius") or 0),
            asn=asn,
            network=network,
            unknown_reason=None if country else "not_found",
        )

    def _asn_of(self, ip: str) -> int | None:
        if self._asn is None:
            return None
        try:
            return self._asn.asn(ip).autonomous_system_number
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return None

    def close(self) -> None:
        self._city.close()
        if self._asn is not None:
            self._asn.close()

"""Step 2 of the flow: an Event plus where it came from and on what."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from riskengine.enrich.geo import GeoInfo, GeoLocator, haversine_km, prefix_network
from riskengine.enrich.lists import ListFolder
from riskengine.enrich.useragent import UserAgentInfo, parse_user_agent
from riskengine.events import Event

__all__ = ["EnrichedEvent", "Enricher", "GeoInfo", "GeoLocator", "UserAgentInfo",
           "haversine_km", "parse_user_agent", "prefix_network"]


@dataclass(frozen=True, slots=True)
class EnrichedEvent:
    event: Event
    geo: GeoInfo
    ua: UserAgentInfo
    lists: frozenset[str] = frozenset()        # the named lists (enrich/lists.py) its address or ASN is on
    roles: tuple[tuple[str, str], ...] = ()    # (list name, role) of those lists that have a role


class Enricher:
    """Geo, User-Agent and named-list lookups. Dataset hints in ``attributes`` fill unknown places."""

    def __init__(self, city_db: Path | None = None, asn_db: Path | None = None, lists: Path | None = None) -> None:
        self.geo = GeoLocator(city_db, asn_db)
        self.lists = ListFolder(lists)

    def enrich(self, event: Event) -> EnrichedEvent:
        geo = self.geo.lookup(event.ip)
        if not geo.known and "geo_country" in event.attributes:
            geo = _from_hints(geo, event.attributes)
        lists = self.lists.poll()
        matched = lists.match(event.ip, geo.asn)
        return EnrichedEvent(event, geo, parse_user_agent(event.user_agent), matched, lists.roles(matched))

    def close(self) -> None:
        self.geo.close()


def _from_hints(geo: GeoInfo, hints: dict) -> GeoInfo:
    """Recorded datasets (the public RBA set) carry country/city/ASN for masked IPs."""
    asn = hints.get("geo_asn")
    asn = int(asn) if isinstance(asn, (int, float)) and not isinstance(asn, bool) else None
    return GeoInfo(
        known=True,
        country=str(hints["geo_country"]),
        city=str(hints["geo_city"]) if hints.get("geo_city") else None,
        asn=asn,
        network=f"AS{asn}" if asn is not None else geo.network,
    )

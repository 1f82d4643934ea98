"""Build riskengine/datasets/synth/geo_pools.csv: real IP networks per city for the synthetic event generator.

Run once (about a minute: it walks the whole bundled GeoLite2-City database) and commit the CSV, so
`riskengine.datasets.synth` never has to scan the database at run time:

    .venv/bin/python scripts/build_geo_pools.py

Each row is one IPv4 network that the bundled database places in one city (every address inside it
resolves to the same record), or a hosting/VPN network of a well-known datacenter provider.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
from collections import Counter, defaultdict
from pathlib import Path

import maxminddb
from _maxminddb_geolite2 import geolite2_database

OUT = Path(__file__).resolve().parents[1] / "riskengine" / "datasets" / "synth" / "geo_pools.csv"
NETS_PER_CITY = 8

# (country, city as the database spells it in English, home weight). Weight 0: the city is only a
# place people travel to or attack from, never a synthetic user's home.
CITIES: list[tuple[str, str, float]] = [
    ("US", "New York", 8), ("US", "Los Angeles", 5), ("US", "Chicago", 4), ("US", "Houston", 3),
    ("US", "Seattle", 2), ("US", "Miami", 2),
    ("CA", "Toronto", 3), ("CA", "Montreal", 2), ("CA", "Vancouver", 2),
    ("GB", "London", 8), ("GB", "Manchester", 3), ("GB", "Birmingham", 2), ("GB", "Edinburgh", 1),
    ("DE", "Berlin", 5), ("DE", "Munich", 3), ("DE", "Hamburg", 3), ("DE", "Frankfurt am Main", 2),
    ("DE", "Cologne", 2),
    ("FR", "Paris", 6), ("FR", "Lyon", 2), ("FR", "Marseille", 2), ("FR", "Toulouse", 1),
    ("ES", "Madrid", 4), ("ES", "Barcelona", 3), ("ES", "Valencia", 1),
    ("IT", "Rome", 3), ("IT", "Milan", 3), ("IT", "Naples", 1),
    ("NL", "Amsterdam", 3), ("NL", "Rotterdam", 2), ("NL", "Utrecht", 1),
    ("SE", "Stockholm", 2), ("SE", "Gothenburg", 1),
    ("NO", "Oslo", 2), ("NO", "Bergen", 1),
    ("PL", "Warsaw", 3), ("PL", "Krakow", 1), ("PL", "Wrocław", 1),
    ("AT", "Vienna", 2), ("CH", "Zurich", 2), ("CH", "Geneva", 1),
    ("BR", "São Paulo", 4), ("BR", "Rio de Janeiro", 2),
    ("JP", "Tokyo", 4), ("JP", "Osaka", 2),
    ("AU", "Sydney", 3), ("AU", "Melbourne", 2),
    ("IN", "Mumbai", 3), ("IN", "Bengaluru", 2), ("IN", "Delhi", 2),
    ("CN", "Beijing", 0), ("CN", "Shanghai", 0), ("RU", "Moscow", 0), ("RU", "St Petersburg", 0),
    ("NG", "Lagos", 0), ("VN", "Hanoi", 0), ("VN", "Ho Chi Minh City", 0), ("UA", "Kiev", 0),
    ("RO", "Bucharest", 0), ("TR", "Istanbul", 0), ("ID", "Jakarta", 0), ("KR", "Seoul", 0),
    ("ZA", "Johannesburg", 0), ("MX", "Mexico City", 0), ("AR", "Buenos Aires", 0),
    ("TH", "Bangkok", 0), ("SG", "Singapore", 0), ("EG", "Cairo", 0),
]

# Well-known hosting ranges (VPN exits and attack infrastructure live here). Only the provider name
# comes from this list; country and city are whatever the bundled database says.
DATACENTERS: dict[str, list[str]] = {
    "digitalocean": ["104.131.0.0/16", "159.203.0.0/16", "138.68.0.0/16", "46.101.0.0/16",
                     "188.166.0.0/16", "128.199.0.0/16"],
    "hetzner": ["88.198.0.0/16", "78.46.0.0/15", "144.76.0.0/16", "136.243.0.0/16", "95.216.0.0/16"],
    "ovh": ["51.38.0.0/16", "51.68.0.0/16", "145.239.0.0/16", "192.99.0.0/16", "158.69.0.0/16"],
    "linode": ["45.33.0.0/17", "139.162.0.0/16", "172.104.0.0/15"],
    "vultr": ["45.32.0.0/16", "45.76.0.0/16", "108.61.0.0/16"],
    "aws": ["52.28.0.0/16", "18.130.0.0/16", "54.64.0.0/15", "54.94.0.0/16", "35.180.0.0/16",
            "13.52.0.0/16"],
    "azure": ["40.113.0.0/16", "13.80.0.0/15"],
}
SUBNETS_PER_RANGE = 3

FIELDS = ["network", "kind", "provider", "country", "city", "lat", "lon", "time_zone", "home_weight"]


def _place(record: dict) -> tuple[str, str, float, float, str]:
    loc = record.get("location", {})
    lat, lon = loc.get("latitude"), loc.get("longitude")
    return (record.get("country", {}).get("iso_code", ""),
            record.get("city", {}).get("names", {}).get("en", ""),
            None if lat is None else round(lat, 4), None if lon is None else round(lon, 4),
            loc.get("time_zone") or "")


def _scan(reader: maxminddb.Reader) -> tuple[dict, Counter]:
    """Candidate networks per wanted city, plus the commonest time zone per country."""
    wanted = {(c, name) for c, name, _ in CITIES}
    found: dict[tuple[str, str], list] = defaultdict(list)
    zones: dict[str, Counter] = defaultdict(Counter)
    for net, record in reader:
        if net.version != 4 or not record:
            continue
        country, city, lat, lon, tz = _place(record)
        if tz:
            zones[country][tz] += 1
        radius = record.get("location", {}).get("accuracy_radius", 1000)
        if (country, city) in wanted and 16 <= net.prefixlen <= 24 and radius <= 100 and lat is not None:
            found[(country, city)].append((radius, net.prefixlen, net, lat, lon, tz))
    return found, {c: z.most_common(1)[0][0] for c, z in zones.items()}


def _pick(candidates: list) -> list:
    """Most precise networks first, spread over different /8s (a stand-in for different ISPs)."""
    candidates = sorted(candidates, key=lambda c: (c[0], c[1], int(c[2].network_address)))
    chosen, octets = [], set()
    for c in candidates:
        first = int(c[2].network_address) >> 24
        if first not in octets:
            chosen.append(c)
            octets.add(first)
        if len(chosen) == NETS_PER_CITY:
            return chosen
    rest = [c for c in candidates if c not in chosen]
    return chosen + rest[: NETS_PER_CITY - len(chosen)]


def _datacenter_rows(reader: maxminddb.Reader, zones: dict) -> list[dict]:
    rows = []
    for provider, ranges in DATACENTERS.items():
        for cidr in ranges:
            block = ipaddress.ip_network(cidr)
            subnets = list(block.subnets(new_prefix=24))
            step = max(1, len(subnets) // SUBNETS_PER_RANGE)
            for sub in subnets[step // 2 :: step][:SUBNETS_PER_RANGE]:
                record, prefixlen = reader.get_with_prefix_len(str(sub.network_address))
                if not record or "country" not in record:
                    continue
                leaf = ipaddress.ip_network(f"{sub.network_address}/{prefixlen}", strict=False)
                net = sub if leaf.prefixlen <= 24 else leaf  # every address must share the record
                country, city, lat, lon, tz = _place(record)
                rows.append(dict(network=str(net), kind="datacenter", provider=provider,
                                 country=country, city=city, lat=lat, lon=lon,
                                 time_zone=tz or zones.get(country, "UTC"), home_weight=0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with maxminddb.open_database(geolite2_database()) as reader:
        found, zones = _scan(reader)
        rows = _datacenter_rows(reader, zones)
    missing = [f"{city}, {country}" for country, city, _ in CITIES if not found.get((country, city))]
    if missing:
        raise SystemExit(f"no precise IPv4 network for {'; '.join(missing)}: fix the spelling in CITIES")
    for country, city, weight in CITIES:
        picked = _pick(found[(country, city)])
        for _, _, net, lat, lon, tz in picked:
            rows.append(dict(network=str(net), kind="isp", provider="", country=country, city=city,
                             lat=lat, lon=lon, time_zone=tz or zones[country], home_weight=weight))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} networks in {len(CITIES)} cities + datacenters to {args.out}")


if __name__ == "__main__":
    main()

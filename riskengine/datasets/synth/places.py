"""Places for the synthetic event stream (synth.py): real IPv4 networks per city and datacenter.

The table is geo_pools.csv beside this file, built once by scripts/build_geo_pools.py from the bundled
GeoLite2-City database, so every generated IP geolocates to the place the generator meant.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

POOLS_CSV = Path(__file__).parent / "geo_pools.csv"


@dataclass(frozen=True)
class GeoPools:
    """Places (a city's ISPs, or a datacenter) as arrays, and the networks of each place.

    Networks are sorted by place, so place p owns networks first[p] .. first[p] + count[p] - 1.
    """

    country: np.ndarray  # per place, ISO code
    city: np.ndarray  # per place, "" when the database knows only the country
    lat: np.ndarray
    lon: np.ndarray
    time_zone: np.ndarray
    home_weight: np.ndarray  # > 0: synthetic users may live here
    datacenter: np.ndarray  # bool: hosting/VPN networks rather than residential ISPs
    first: np.ndarray
    count: np.ndarray
    net_place: np.ndarray  # per network
    net_base: np.ndarray  # network address as an integer
    net_hosts: np.ndarray  # usable host addresses

    def random_nets(self, places: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random network in each of `places`."""
        places = np.asarray(places)
        return self.first[places] + (rng.random(places.shape) * self.count[places]).astype(np.int64)

    def host_ips(self, nets: np.ndarray, hosts: np.ndarray) -> np.ndarray:
        """Host number `hosts` (any non-negative int, wrapped) inside each network, as an int."""
        nets = np.asarray(nets)
        return self.net_base[nets] + 1 + np.asarray(hosts) % self.net_hosts[nets]

    def random_ips(self, nets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        nets = np.asarray(nets)
        return self.host_ips(nets, rng.integers(0, 1 << 31, size=nets.shape))

    def random_country_nets(self, countries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random residential network anywhere in each country (how mobile carriers look).
        Every country asked for must have one (home countries do)."""
        nets = np.flatnonzero(~self.datacenter[self.net_place])
        nets = nets[np.argsort(self.country[self.net_place[nets]], kind="stable")]
        codes = self.country[self.net_place[nets]]
        left = np.searchsorted(codes, countries, "left")
        width = np.searchsorted(codes, countries, "right") - left
        return nets[left + (rng.random(len(countries)) * width).astype(np.int64)]

    def distance_km(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Great-circle distance between places a and b (haversine)."""
        lat1, lon1 = np.radians(self.lat[a]), np.radians(self.lon[a])
        lat2, lon2 = np.radians(self.lat[b]), np.radians(self.lon[b])
        h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
        return 2 * 6371.0 * np.arcsin(np.sqrt(h))

    def utc_offsets(self, start: datetime, days: int) -> np.ndarray:
        """Seconds east of UTC for each place on each day (local noon), DST included."""
        noons = [start.replace(tzinfo=timezone.utc) + timedelta(days=d, hours=12) for d in range(days)]
        offsets = {tz: [int(n.astimezone(ZoneInfo(tz)).utcoffset().total_seconds()) for n in noons]
                   for tz in set(self.time_zone)}
        return np.array([offsets[tz] for tz in self.time_zone], dtype=np.int64).reshape(-1, days)


@lru_cache(maxsize=4)
def load_pools(path: Path = POOLS_CSV) -> GeoPools:
    """Read the committed network table (cached: every generate_events call shares it)."""
    nets = pd.read_csv(path, keep_default_na=False, dtype={"city": str, "provider": str})
    nets["datacenter"] = nets["kind"] == "datacenter"
    keys = ["datacenter", "country", "city"]
    places = nets.groupby(keys, sort=True).agg(
        lat=("lat", "mean"), lon=("lon", "mean"), time_zone=("time_zone", "first"),
        home_weight=("home_weight", "max"), count=("network", "size")).reset_index()
    nets = nets.merge(places[keys].reset_index(names="place"), on=keys).sort_values(["place", "network"])
    parsed = [ipaddress.IPv4Network(n) for n in nets["network"]]
    count = places["count"].to_numpy(np.int64)
    return GeoPools(
        country=places["country"].to_numpy(object), city=places["city"].to_numpy(object),
        lat=places["lat"].to_numpy(float), lon=places["lon"].to_numpy(float),
        time_zone=places["time_zone"].to_numpy(object),
        home_weight=places["home_weight"].to_numpy(float),
        datacenter=places["datacenter"].to_numpy(bool),
        first=np.concatenate([[0], np.cumsum(count)[:-1]]), count=count,
        net_place=nets["place"].to_numpy(np.int64),
        net_base=np.array([int(n.network_address) for n in parsed], dtype=np.int64),
        net_hosts=np.array([max(n.num_addresses - 2, 1) for n in parsed], dtype=np.int64),
    )


def format_ips(ips: np.ndarray) -> np.ndarray:
    """Integers to dotted IPv4 strings (formatted once per distinct address)."""
    unique, inverse = np.unique(ips, return_inverse=True)
    return np.array([str(ipaddress.IPv4Address(int(i))) for i in unique], dtype=object)[inverse]

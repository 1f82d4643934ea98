"""Named lists (enrich/lists.py): parsing, lookups, reload on change, and what reaches the enrichment."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from riskengine.enrich import Enricher
from riskengine.enrich.lists import ListError, ListFolder, NamedList, NamedLists
from tests.conftest import OSLO_IP, US_IP, event

ROOT = Path(__file__).parents[1]


def test_addresses_ranges_and_asns_match_in_both_families() -> None:
    lists = NamedLists.parse({
        "corp": ("# role: allow", "192.0.2.0/24", "2001:db8::/32"),
        "tor": ("# role: anonymizer", "198.51.100.7", "AS60729"),
    })
    assert lists.match("192.0.2.200", None) == {"corp"}
    assert lists.match("2001:db8:1::5", None) == {"corp"}
    assert lists.match("::ffff:198.51.100.7", None) == {"tor"}          # an IPv4-mapped IPv6 address
    assert lists.match("198.51.100.8", None) == frozenset()
    assert lists.match("203.0.113.1", 60729) == {"tor"}
    assert lists.with_role("anonymizer", lists.match("198.51.100.7", None))
    assert not lists.with_role("anonymizer", lists.match("192.0.2.1", None))


def test_overlapping_and_adjacent_ranges_merge_without_gaps() -> None:
    named = NamedList.parse("x", ("10.0.0.0/25", "10.0.0.128/25", "10.0.0.5", "10.0.2.0/24"))
    inside = [ipaddress.ip_address(a) for a in ("10.0.0.0", "10.0.0.127", "10.0.0.128", "10.0.0.255", "10.0.2.9")]
    outside = [ipaddress.ip_address(a) for a in ("9.255.255.255", "10.0.1.0", "10.0.3.0")]
    assert all(named.contains(a, None) for a in inside)
    assert not any(named.contains(a, None) for a in outside)


@pytest.mark.parametrize("line, message", [
    ("not-an-ip", "line 2: 'not-an-ip' is not an address"),
    ("10.0.0.0/33", "is not an address, a CIDR range or AS<n>"),
    ("# role: trusted", "unknown role 'trusted'"),
])
def test_a_broken_line_is_named(line: str, message: str) -> None:
    with pytest.raises(ListError, match=message):
        NamedList.parse("bad", ("10.0.0.1", line))


def test_a_folder_reloads_changes_and_keeps_the_last_good_version(tmp_path: Path) -> None:
    (tmp_path / "block.txt").write_text("# role: deny\n192.0.2.1\n")
    folder = ListFolder(tmp_path, interval=0)
    assert folder.poll().match("192.0.2.1", None) == {"block"} and folder.error is None

    (tmp_path / "block.txt").write_text("# role: deny\n192.0.2.2\n")
    os.utime(tmp_path / "block.txt", (1, 1))                  # a different mtime, whatever the clock's resolution
    assert folder.poll().match("192.0.2.2", None) == {"block"}
    assert folder.poll().match("192.0.2.1", None) == frozenset()

    (tmp_path / "block.txt").write_text("192.0.2.3\nnonsense\n")
    os.utime(tmp_path / "block.txt", (2, 2))
    assert folder.poll().match("192.0.2.2", None) == {"block"}          # the broken edit is refused
    assert "block line 2" in folder.error

    (tmp_path / "block.txt").unlink()
    assert folder.poll().match("192.0.2.2", None) == frozenset()         # a removed file is a removed list


def test_the_enricher_names_the_lists_an_event_is_on(tmp_path: Path) -> None:
    (tmp_path / "office.txt").write_text(f"# role: allow\n{OSLO_IP}/32\n")
    enricher = Enricher(lists=tmp_path)
    try:
        assert enricher.enrich(event(ip=OSLO_IP)).lists == {"office"}
        assert enricher.enrich(event(ip=US_IP)).lists == frozenset()
    finally:
        enricher.close()


def test_the_example_lists_in_the_repository_parse() -> None:
    folder = ListFolder(ROOT / "lists")
    assert folder.error is None
    assert folder.current.lists["hosting"].role == "anonymizer" and 16509 in folder.current.lists["hosting"].asns
    assert folder.current.lists["satellite"].role == "travel_exempt"

"""The cross-topic order: the live merge releases records in replay's `merge_order`, and waits as documented."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ordering import MERGE_RANK, TimestampMerge, merge_order
from agents.pipeline import RawRecord

TOPICS = list(MERGE_RANK)


def record(topic: str, offset: int, ts: int, partition: int = 0) -> RawRecord:
    return RawRecord(topic, partition, offset, ts, b"P", b"{}")


@st.composite
def streams(draw) -> dict[str, list[RawRecord]]:
    out = {}
    for topic in TOPICS:
        times = sorted(draw(st.lists(st.integers(0, 50), max_size=12)))
        out[topic] = [record(topic, i, t) for i, t in enumerate(times)]
    return out


@settings(max_examples=200, deadline=None)
@given(streams(), st.randoms(use_true_random=False))
def test_live_merge_releases_in_replay_order(per_topic, rnd: random.Random) -> None:
    merge = TimestampMerge(grace_ms=50, max_idle_ms=1_000)
    pending = {t: list(recs) for t, recs in per_topic.items()}
    released = []
    now = 0.0
    fetches = {t: 0 for t in TOPICS}  # the fetch response that last reported each topic's highwater
    # Records arrive topic by topic in random interleavings (as fetches do); every topic is caught up
    # only once all its records have arrived. Each round is a fetch response holding some of the topics.
    for fetch in range(1, 10_000):
        if not any(pending.values()):
            break
        topic = rnd.choice([t for t in TOPICS if pending[t]])
        for t in TOPICS:
            if t == topic or rnd.random() < 0.5:
                fetches[t] = fetch
        for _ in range(rnd.randint(1, 3)):
            if pending[topic]:
                merge.add(pending[topic].pop(0), None, now, fetched_ms=fetch)
        now += rnd.choice([0, 10, 100])
        released += [r for r, _ in merge.release(now, lambda t, p: not pending[t], lambda t, p: fetches[t])]
    released += [r for r, _ in merge.release(now + 10_000, lambda t, p: True)]
    assert merge.buffered == 0
    assert released == list(merge_order(per_topic.values()))


def test_ties_go_context_first() -> None:
    merge = TimestampMerge(grace_ms=0)
    for topic in reversed(TOPICS):
        merge.add(record(topic, 0, 1_000), None, 0)
    assert [r.topic for r, _ in merge.release(0, lambda t, p: True)] == TOPICS


def test_waits_for_a_lagging_topic_until_max_idle_counted_from_when_it_blocked() -> None:
    merge = TimestampMerge(grace_ms=50, max_idle_ms=1_000)
    merge.add(record(TOPICS[3], 0, 5), "h", received_ms=0)  # buffered long ago, e.g. during a catch-up
    lagging = lambda t, p: False  # noqa: E731 - the other topics still have records at the broker
    assert merge.release(100_000, lagging) == [], "released before waiting for the lagging topics"
    assert merge.release(100_999, lagging) == []
    assert [h for _, h in merge.release(101_000, lagging)] == ["h"]


def test_grace_for_caught_up_topics_and_no_wait_when_every_topic_has_a_head() -> None:
    merge = TimestampMerge(grace_ms=50, max_idle_ms=1_000)
    merge.add(record(TOPICS[3], 0, 5), "v", received_ms=1_000)
    assert merge.release(1_020, lambda t, p: True) == []  # empty topics caught up, but within the grace
    assert [h for _, h in merge.release(1_050, lambda t, p: True)] == ["v"]
    for i, topic in enumerate(TOPICS):
        merge.add(record(topic, 1, 10 + i), topic, received_ms=2_000)
    # Every topic has a head: the smallest goes at once, however recent.
    out = merge.release(2_000, lambda t, p: False)
    assert [h for _, h in out] == TOPICS[:1]  # then labs waits: patients ran empty and may have more at the broker


def test_a_head_goes_at_once_when_the_empty_topics_highwaters_are_as_fresh_as_its_fetch() -> None:
    merge = TimestampMerge(grace_ms=50, max_idle_ms=1_000)
    fetched = {t: 7.0 for t in TOPICS}
    fetched[TOPICS[1]] = 6.0  # labs was left out of fetch 7 (it still had records buffered then)
    merge.add(record(TOPICS[3], 0, 5), "v0", received_ms=1_000, fetched_ms=7.0)
    merge.add(record(TOPICS[3], 1, 6), "v1", received_ms=1_000, fetched_ms=7.0)
    caught_up = lambda t, p: True  # noqa: E731
    assert merge.release(1_001, caught_up, fetched.get) == [], "released on a highwater older than its fetch"
    fetched.update({t: 8.0 for t in TOPICS})  # the next fetch held every topic, labs with nothing new
    assert [h for _, h in merge.release(1_002, caught_up, fetched.get)] == ["v0", "v1"]  # no grace waited
    # A fresh highwater of a topic that is not caught up releases nothing: its records are yet to come.
    merge.add(record(TOPICS[3], 2, 7), "v2", received_ms=2_000, fetched_ms=8.0)
    assert merge.release(2_001, lambda t, p: t != TOPICS[0], fetched.get) == []
    # Unknown fetch times (a consumer that cannot tell): the grace, as before.
    merge.add(record(TOPICS[3], 3, 8), "v3", received_ms=2_000)
    assert [h for _, h in merge.release(2_010, caught_up, fetched.get)] == ["v2"]  # v3 waits out the grace
    assert merge.release(2_049, caught_up, lambda t, p: None) == []
    assert [h for _, h in merge.release(2_050, caught_up, lambda t, p: None)] == ["v3"]


def test_with_several_heads_the_smallest_goes_only_on_fresh_highwaters_of_the_empty_topics() -> None:
    merge = TimestampMerge(grace_ms=50, max_idle_ms=1_000)
    merge.add(record(TOPICS[1], 0, 5), "l0", received_ms=0, fetched_ms=3.0)
    merge.add(record(TOPICS[3], 0, 6), "v0", received_ms=0, fetched_ms=3.0)
    fetched = {t: 3.0 for t in TOPICS}
    fetched[TOPICS[0]] = 2.0  # the patients topic's highwater is older than the heads' fetch
    caught_up = lambda t, p: True  # noqa: E731
    assert merge.release(1, caught_up, lambda t, p: fetched[t]) == []
    fetched[TOPICS[0]] = 3.0
    assert [h for _, h in merge.release(2, caught_up, lambda t, p: fetched[t])] == ["l0", "v0"]


def test_fetch_stamps_are_read_before_highwaters() -> None:
    # aiokafka sets a partition's highwater, then its stamp: read the other way round, a fetch response landing in
    # between would pair an old highwater with a new stamp and release a head too early.
    calls: list[tuple[str, str]] = []
    merge = TimestampMerge(grace_ms=50)
    merge.add(record(TOPICS[3], 0, 5), "v", received_ms=0, fetched_ms=1.0)
    out = merge.release(1, lambda t, p: calls.append(("highwater", t)) is None,
                        lambda t, p: calls.append(("stamp", t)) or 1.0)
    assert [h for _, h in out] == ["v"]
    for topic in TOPICS[:3]:
        assert calls.index(("stamp", topic)) < calls.index(("highwater", topic)), calls


def test_a_topic_that_lags_for_good_costs_one_max_idle_not_one_per_record() -> None:
    merge = TimestampMerge(grace_ms=50, max_idle_ms=30_000)
    for i in range(100):
        merge.add(record(TOPICS[3], i, i), i, received_ms=0)
    lagging = lambda t, p: t != TOPICS[2]  # noqa: E731 - medications never catches up
    released = []
    for tick in range(0, 5 * 60_000, 50):
        released += [h for _, h in merge.release(tick, lagging)]
    assert released == list(range(100))
    assert merge.release(0, lagging) == []


def test_the_idle_clock_restarts_once_the_lagging_topic_delivers() -> None:
    merge = TimestampMerge(grace_ms=0, max_idle_ms=1_000)
    merge.add(record(TOPICS[3], 0, 10), "v0", received_ms=0)
    assert merge.release(500, lambda t, p: False) == []  # blocked since 500
    merge.add(record(TOPICS[0], 0, 5), "p0", received_ms=600)
    merge.add(record(TOPICS[1], 0, 6), "l0", received_ms=600)
    merge.add(record(TOPICS[2], 0, 7), "m0", received_ms=600)
    assert [h for _, h in merge.release(600, lambda t, p: False)] == ["p0"]  # every topic had a head
    assert merge.release(1_400, lambda t, p: False) == []  # a new wait from 600, not from 500
    assert [h for _, h in merge.release(1_600, lambda t, p: False)] == ["l0", "m0", "v0"]

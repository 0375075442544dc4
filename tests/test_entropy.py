"""Identifier entropy drawn a page at a time: never the same bytes twice, not even across a fork."""

from __future__ import annotations

import os

from passerelle.entropy import random_bytes, random_hex
from passerelle.predictionlog import new_prediction_id


def test_bytes_are_never_handed_out_twice() -> None:
    drawn = [random_bytes(8) for _ in range(5000)]  # several pages
    assert len(set(drawn)) == len(drawn)
    assert all(len(b) == 8 for b in drawn)
    assert len(random_hex(8)) == 16
    assert len(random_bytes(10_000)) == 10_000  # larger than a page: straight from the kernel


def test_a_forked_child_does_not_repeat_its_parents_bytes() -> None:
    random_bytes(8)  # a page is loaded and partly used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids, then leave without running pytest's teardown
        os.close(read)
        os.write(write, b"".join(random_bytes(8) for _ in range(16)))
        os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    mine = b"".join(random_bytes(8) for _ in range(16))
    assert len(child) == len(mine) == 128
    assert child != mine


def test_prediction_ids_stay_unique_and_time_ordered() -> None:
    ids = [new_prediction_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    millis = [i[:13] for i in ids]  # the 48 bits of Unix milliseconds
    assert millis == sorted(millis)

"""Position-keyed noise: reproducible per key, independent across keys, normal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from bigrestore.diffusion.noise import NoiseStream, TileKey, batched_noise, noise_threads
from bigrestore.errors import BadInputError

KEY = TileKey(seed=7, t=2, c=1, z=3, tile_y=256, tile_x=-128)


def test_same_key_same_values_in_fresh_streams() -> None:
    a = NoiseStream(KEY, 4).normal((3, 17, 19))
    b = NoiseStream(tuple(KEY), 4).normal((3, 17, 19))
    assert a.dtype == np.float32 and a.shape == (3, 17, 19)
    assert np.array_equal(a, b)


def test_stream_advances_in_order() -> None:
    s = NoiseStream(KEY, 0)
    first, second = s.normal((64,)), s.normal((64,))
    assert not np.array_equal(first, second)
    # Even-sized blocks consume whole Box-Muller pairs: two blocks of n are one block of 2n.
    assert np.array_equal(np.concatenate([first, second]), NoiseStream(KEY, 0).normal((128,)))


def test_batched_noise_rows_equal_single_draws() -> None:
    keys = [KEY, KEY._replace(tile_x=0), KEY._replace(c=0)]
    streams = [NoiseStream(k, i) for i, k in enumerate(keys)]
    batch = batched_noise(streams, (2, 5, 6), "cpu")
    assert batch.shape == (3, 2, 5, 6) and batch.dtype == torch.float32
    for i, k in enumerate(keys):
        alone = batched_noise([NoiseStream(k, i)], (2, 5, 6), torch.device("cpu"))[0]
        assert torch.equal(batch[i], alone)
    with pytest.raises(BadInputError):
        batched_noise([], (2, 2), "cpu")
    with pytest.raises(BadInputError, match="listed twice"):
        batched_noise([streams[0], streams[1], streams[0]], (2, 2), "cpu")


@pytest.mark.parametrize("threads", [1, 3])
def test_shared_streams_are_drawn_once_with_the_same_values(threads: int) -> None:
    """An antithetic pair and padding copies share a stream: batched_noise draws it once (on
    one or several threads) and every copy still gives what drawing alone would, draw after
    draw, with each copy's generator left where its own draws would have left it."""
    other = KEY._replace(tile_y=0)

    def streams() -> list[NoiseStream]:
        return [
            NoiseStream(KEY, 0),
            NoiseStream(KEY, 0, negate=True),
            NoiseStream(other, 1),
            NoiseStream(other, 1, negate=True),
            NoiseStream(KEY, 0),  # a padding copy of the first item
        ]

    shared, alone = streams(), streams()
    shape = (1, 64, 65)  # 4160 values: past the threading threshold
    for _ in range(3):
        batch = batched_noise(shared, shape, "cpu", threads=threads)
        expected = np.stack([s.normal(shape) for s in alone])
        assert np.array_equal(batch.numpy(), expected)
        assert np.array_equal(batch[1].numpy(), -batch[0].numpy())
    assert [s.position for s in shared] == [s.position for s in alone]
    # A copy that is behind the others is its own stream again: it is drawn, not followed.
    late = NoiseStream(KEY, 0)
    batch = batched_noise([shared[0], late], (7,), "cpu", threads=threads)
    assert np.array_equal(batch[1].numpy(), NoiseStream(KEY, 0).normal((7,)))
    assert not np.array_equal(batch[0].numpy(), batch[1].numpy())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_on_threads_of_its_own() -> None:
    """The thread pool is kept per process: a child forked after the parent drew on threads
    (a DataLoader worker, say) must not queue work for threads that exist only in the parent."""
    streams = [NoiseStream(KEY._replace(tile_x=i), 0) for i in range(4)]
    expected = batched_noise(streams, (1, 64, 64), "cpu", threads=2)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 if it draws the same values, killed by the alarm if stuck
        signal.alarm(20)
        again = [NoiseStream(KEY._replace(tile_x=i), 0) for i in range(4)]
        os._exit(
            0 if torch.equal(batched_noise(again, (1, 64, 64), "cpu", threads=2), expected) else 1
        )
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_noise_threads_follow_the_workers_torch_threads_on_a_cpu() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert noise_threads("cpu") == 2
        torch.set_num_threads(1)
        assert noise_threads(torch.device("cpu")) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("field", ["seed", "t", "c", "z", "tile_y", "tile_x", "sample"])
def test_neighbouring_keys_are_uncorrelated(field: str) -> None:
    n = 40_000
    base = NoiseStream(KEY, 0).normal((n,))
    if field == "sample":
        other = NoiseStream(KEY, 1).normal((n,))
    else:
        other = NoiseStream(KEY._replace(**{field: getattr(KEY, field) + 1}), 0).normal((n,))
    assert abs(np.corrcoef(base, other)[0, 1]) < 5.0 / np.sqrt(n)


def test_values_are_standard_normal() -> None:
    x = NoiseStream(KEY, 9).normal((200_000,)).astype(np.float64)
    assert abs(x.mean()) < 5.0 / np.sqrt(x.size)
    assert abs(x.std() - 1.0) < 5.0 / np.sqrt(2 * x.size)
    assert stats.kstest(x, "norm").pvalue > 1e-4
    for lag in (1, 2, 3):  # neighbouring values (Box-Muller pairs included) are independent
        assert abs(np.corrcoef(x[:-lag], x[lag:])[0, 1]) < 5.0 / np.sqrt(x.size)
        assert abs(np.corrcoef(x[:-lag] ** 2, x[lag:] ** 2)[0, 1]) < 5.0 / np.sqrt(x.size)
    assert np.isfinite(x).all()


def test_signs_and_large_values_give_distinct_streams() -> None:
    variants = [
        KEY._replace(tile_y=1),
        KEY._replace(tile_y=-1),
        KEY._replace(tile_y=2**31),
        KEY._replace(tile_y=0, tile_x=1),
        KEY._replace(tile_y=2**62),
        KEY._replace(tile_y=-(2**62)),
    ]
    draws = {NoiseStream(k, 0).normal((8,)).tobytes() for k in variants}
    assert len(draws) == len(variants)


@pytest.mark.parametrize(
    "key, sample",
    [(KEY._replace(z=1.0), 0), (KEY._replace(t=True), 0), (KEY._replace(seed=2**63), 0), (KEY, -1)],
)
def test_bad_keys_are_refused(key: tuple, sample: int) -> None:
    with pytest.raises(BadInputError):
        NoiseStream(key, sample)


def test_same_values_in_another_process() -> None:
    code = (
        "import sys; from bigrestore.diffusion.noise import NoiseStream, TileKey\n"
        f"s = NoiseStream(TileKey(*{tuple(KEY)!r}), 3); s.normal((5,))\n"
        "sys.stdout.write(s.normal((4, 7)).tobytes().hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = NoiseStream(KEY, 3)
    here.normal((5,))
    assert out.stdout == here.normal((4, 7)).tobytes().hex()

from __future__ import annotations

import gc
import tracemalloc

import pytest
import torch

from eamstcn.runtime.config import MemoryConfig
from eamstcn.runtime.memory import MemoryBank

KEY_DIM, VALUE_DIM, H, W = 16, 4, 2, 3  # h*w = 6 positions per frame
HW = H * W


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny matmuls gain nothing from threads; on a loaded 2-core box they stall on them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_bank(dtype: torch.dtype = torch.float32, device: str = "cpu", **config) -> MemoryBank:
    settings = {"capacity": 4, "top_k": 4, **config}  # top_k <= h*w: a query's picks stay in one frame
    max_objects = settings.pop("max_objects", 3)
    num_objects = settings.pop("num_objects", 1)
    return MemoryBank(
        MemoryConfig(**settings), KEY_DIM, VALUE_DIM, H, W, max_objects, num_objects=num_objects, device=device, dtype=dtype
    )


def frame_key(frame: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(1, Ck, h, w): 3 * one-hot(frame) at every position, so frames never resemble each other."""
    key = torch.zeros(1, KEY_DIM, H, W, dtype=dtype)
    key[0, frame % KEY_DIM] = 3.0
    return key


def frame_value(frame: int, objects: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(K, Cv, h, w) filled with frame + object / 10."""
    offsets = torch.arange(objects, dtype=dtype).view(objects, 1, 1, 1) / 10
    return (frame + offsets).expand(objects, VALUE_DIM, H, W).contiguous()


def query_for(frames: list[int]) -> torch.Tensor:
    """A query whose position p matches frame ``frames[p]`` exactly."""
    query = torch.zeros(1, KEY_DIM, HW)
    for position, frame in enumerate(frames):
        query[0, frame % KEY_DIM, position] = 3.0
    return query.view(1, KEY_DIM, H, W)


def reads_value(bank: MemoryBank, frame: int, objects: int = 1) -> bool:
    readout = bank.read(query_for([frame] * HW))
    return torch.allclose(readout.float(), frame_value(frame, objects), atol=1e-3)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="capacity"):
        MemoryConfig(capacity=1)
    with pytest.raises(ValueError, match="top_k"):
        MemoryConfig(top_k=0)
    with pytest.raises(ValueError, match="eviction"):
        MemoryConfig(eviction="lru")  # type: ignore[arg-type]


@pytest.mark.parametrize("eviction", ["usage", "oldest"])
def test_capacity_never_exceeded_and_first_frame_kept(eviction: str) -> None:
    bank = make_bank(eviction=eviction)
    for frame in range(40):
        bank.add(frame_key(frame % 15 + 1 if frame else 0), frame_value(frame))
        assert bank.size == min(frame + 1, bank.capacity)
        assert int(bank._valid.sum()) == bank.size * HW
        bank.read(query_for([frame % 15 + 1] * HW))  # never reads frame 0: its usage stays 0
    assert reads_value(bank, 0)


@pytest.mark.parametrize(("eviction", "expected_slot"), [("usage", 2), ("oldest", 1)])
def test_usage_and_oldest_pick_their_victim(eviction: str, expected_slot: int) -> None:
    bank = make_bank(eviction=eviction)
    for frame in range(4):
        assert int(bank.add(frame_key(frame), frame_value(frame))) == frame
    for _ in range(3):
        bank.read(query_for([1, 1, 1, 3, 3, 3]))  # frames 1 and 3 used, frame 2 never
    assert int(bank.add(frame_key(4), frame_value(4))) == expected_slot
    assert reads_value(bank, 4)
    gone = 2 if eviction == "usage" else 1
    kept = 1 if eviction == "usage" else 2
    assert not reads_value(bank, gone) and reads_value(bank, kept) and reads_value(bank, 0)


def test_usage_is_mean_weight_per_read_not_the_raw_total() -> None:
    bank = make_bank(capacity=3)
    bank.add(frame_key(0), frame_value(0))
    bank.add(frame_key(1), frame_value(1))
    for _ in range(10):
        bank.read(query_for([1, 0, 0, 0, 0, 0]))  # frame 1: mass 1 per read
    bank.add(frame_key(2), frame_value(2))
    for _ in range(2):
        bank.read(query_for([1, 2, 2, 0, 0, 0]))  # frame 1: 1 per read; frame 2: 2 per read
    # Totals: frame 1 has 12 (over 12 reads), frame 2 has 4 (over 2). Raw totals would
    # evict frame 2 (slot 2); per read, frame 1 (1.0) is less used than frame 2 (2.0).
    assert int(bank.add(frame_key(3), frame_value(3))) == 1


def test_unread_slots_are_protected_until_all_are_unread() -> None:
    bank = make_bank(capacity=3)
    for frame in range(3):
        bank.add(frame_key(frame), frame_value(frame))
    for _ in range(3):
        bank.read(query_for([1] * HW))
    assert int(bank.add(frame_key(3), frame_value(3))) == 2  # frame 2: read, never used
    assert int(bank.add(frame_key(4), frame_value(4))) == 1  # frame 3 unread: frame 1 goes
    assert int(bank.add(frame_key(5), frame_value(5))) == 2  # both unread: the older (frame 3)


def test_permanent_frames_are_not_replaced_and_a_full_permanent_bank_refuses() -> None:
    bank = make_bank(capacity=3)
    bank.add(frame_key(0), frame_value(0))
    bank.add(frame_key(1), frame_value(1), permanent=True)
    for frame in range(2, 8):
        assert int(bank.add(frame_key(frame), frame_value(frame))) == 2
    assert reads_value(bank, 0) and reads_value(bank, 1)
    full = make_bank(capacity=2)
    full.add(frame_key(0), frame_value(0))
    full.add(frame_key(1), frame_value(1), permanent=True)
    with pytest.raises(RuntimeError, match="permanent"):
        full.add(frame_key(2), frame_value(2))


def test_add_objects_mid_stream() -> None:
    bank = make_bank(num_objects=1, max_objects=3)
    bank.add(frame_key(0), frame_value(0, objects=1))
    assert bank.add_objects(2) == 3 and bank.num_objects == 3
    readout = bank.read(query_for([0] * HW))
    assert readout.shape == (3, VALUE_DIM, H, W)
    torch.testing.assert_close(readout[0], frame_value(0)[0])
    assert torch.all(readout[1:] == 0)  # older frames hold zeros for the new objects
    with pytest.raises(ValueError, match="shape"):
        bank.add(frame_key(1), frame_value(1, objects=1))
    bank.add(frame_key(1), frame_value(1, objects=3))
    assert reads_value(bank, 1, objects=3)
    with pytest.raises(ValueError, match="max_objects"):
        bank.add_objects(1)


def test_reset() -> None:
    bank = make_bank(num_objects=1, max_objects=3)
    bank.add_objects(2)
    for frame in range(6):
        bank.add(frame_key(frame + 1), frame_value(frame + 1, objects=3))
    bank.reset()
    assert bank.size == 0 and bank.num_objects == 1
    with pytest.raises(RuntimeError, match="empty"):
        bank.read(query_for([0] * HW))
    assert int(bank.add(frame_key(9), frame_value(9))) == 0
    bank.add_objects(2)
    readout = bank.read(query_for([9] * HW))
    torch.testing.assert_close(readout[0], frame_value(9)[0])
    assert torch.all(readout[1:] == 0)  # nothing left over from the previous stream
    for frame in range(10):  # the new first frame is permanent
        bank.add(frame_key(frame + 1), frame_value(frame + 1, objects=3))
    assert bank.read(query_for([9] * HW))[0].eq(9).all()


def test_inputs_are_checked() -> None:
    bank = make_bank()
    with pytest.raises(ValueError, match="shape"):
        bank.add(torch.zeros(1, KEY_DIM, H, W + 1), frame_value(0))
    with pytest.raises(ValueError, match="float32"):
        bank.add(frame_key(0, torch.float64), frame_value(0))
    bank.add(frame_key(0), frame_value(0))
    with pytest.raises(ValueError, match="query_key"):
        bank.read(torch.zeros(1, KEY_DIM + 1, H, W))


def test_fp16_bank_matches_fp32() -> None:
    generator = torch.Generator().manual_seed(0)
    banks = {dtype: make_bank(dtype, capacity=3, top_k=5) for dtype in (torch.float32, torch.float16)}
    for _ in range(6):
        key = torch.randn(1, KEY_DIM, H, W, generator=generator)
        value = torch.randn(1, VALUE_DIM, H, W, generator=generator)
        query = key + 0.3 * torch.randn(1, KEY_DIM, H, W, generator=generator)
        readouts = {}
        for dtype, bank in banks.items():
            bank.add(key.to(dtype), value.to(dtype))
            readouts[dtype] = bank.read(query.to(dtype)).float()
        torch.testing.assert_close(readouts[torch.float16], readouts[torch.float32], atol=2e-2, rtol=2e-2)


def test_commit_stores_only_when_the_device_flag_holds() -> None:
    bank = make_bank(capacity=3)
    bank.add(frame_key(0), frame_value(0))
    no, yes = torch.tensor(False), torch.tensor(True)
    bank.commit(no, frame_key(1), frame_value(1))
    assert bank.size == 1 and int(bank.writes) == 1 and not reads_value(bank, 1)
    assert int(bank._valid[: bank.capacity].sum()) == HW  # the scratch slot is never read
    bank.commit(yes, frame_key(2), frame_value(2))
    assert bank.size == 2 and int(bank.writes) == 2 and reads_value(bank, 2) and reads_value(bank, 0)
    for frame in range(3, 9):  # full: flagged commits evict, unflagged ones change nothing
        bank.commit(torch.tensor(frame % 2 == 0), frame_key(frame), frame_value(frame))
    assert bank.size == 3 and int(bank.writes) == 5
    assert reads_value(bank, 0) and reads_value(bank, 8) and not reads_value(bank, 7)


def test_commit_refuses_when_every_slot_is_permanent() -> None:
    bank = make_bank(capacity=2)
    bank.add(frame_key(0), frame_value(0))
    bank.add(frame_key(1), frame_value(1), permanent=True)
    with pytest.raises(RuntimeError, match="permanent"):
        bank.commit(torch.tensor(False), frame_key(2), frame_value(2))


def test_fp16_key_norms_past_256_do_not_vanish() -> None:
    """|k|^2 = 90,000 > 65504: an fp16 squared norm is inf and the slot scores -inf."""
    bank = make_bank(torch.float16, capacity=3)
    for frame in range(3):
        key = torch.zeros(1, KEY_DIM, H, W, dtype=torch.float16)
        key[0, frame] = 300.0
        bank.add(key, frame_value(frame, dtype=torch.float16))
    query = torch.zeros(1, KEY_DIM, H, W, dtype=torch.float16)
    query[0, 2] = 300.0
    readout = bank.read(query)
    assert torch.isfinite(readout).all()
    torch.testing.assert_close(readout.float(), frame_value(2), atol=1e-3, rtol=0)


def _tensor_count() -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is torch.Tensor or type(obj) is torch.nn.Parameter)




ON_CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")])


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
@pytest.mark.parametrize("eviction", ["usage", "oldest"])
def test_no_allocation_growth_at_capacity(device: str, eviction: str) -> None:
    bank = make_bank(device=device, eviction=eviction, num_objects=2, max_objects=2)
    generator = torch.Generator().manual_seed(1)
    keys = [torch.randn(1, KEY_DIM, H, W, generator=generator).to(device) for _ in range(5)]
    values = [torch.randn(2, VALUE_DIM, H, W, generator=generator).to(device) for _ in range(5)]
    flags = [torch.tensor(True, device=device), torch.tensor(False, device=device)]

    def cycle(i: int) -> None:
        bank.add(keys[i % 5], values[i % 5])
        bank.commit(flags[i % 2], keys[(i + 1) % 5], values[(i + 1) % 5])  # stored, or to the scratch slot
        bank.read(keys[(i + 2) % 5])

    for i in range(10):  # warm-up: fill the bank, allocate lazily created state
        cycle(i)
    tensors = bank._tensors() + tuple(t for t in vars(bank._work).values() if isinstance(t, torch.Tensor))
    pointers = [t.data_ptr() for t in tensors]
    nbytes = bank.nbytes
    gc.collect()
    count = _tensor_count()
    cuda_bytes = torch.cuda.memory_allocated() if device == "cuda" else 0
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(1000):
        cycle(i)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    gc.collect()
    assert bank.size == bank.capacity
    assert [t.data_ptr() for t in tensors] == pointers
    assert bank.nbytes == nbytes
    assert _tensor_count() <= count
    assert grown < 64 * 1024, f"Python heap grew by {grown} bytes over 1000 cycles"
    if device == "cuda":
        assert torch.cuda.memory_allocated() == cuda_bytes

"""setup_distributed and a 2-process data-parallel run on CPU (gloo)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_train_loop import prepared, tiny_cfg  # noqa: F401 (session fixture)

from midirwkv.errors import BadRequestError
from midirwkv.train.distributed import all_reduce_sum, cleanup_distributed, setup_distributed


def test_single_process_setup(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = setup_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.distributed) == (0, 1, 0, True, False)
    assert info.device == torch.device("cpu")
    assert all_reduce_sum([1.5, 2.0], info.device) == [1.5, 2.0]
    cleanup_distributed()
    with pytest.raises(BadRequestError):
        setup_distributed("tpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(BadRequestError):
        setup_distributed("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg, out: str) -> None:
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from midirwkv.train.loop import train
    try:
        res = train(cfg)
        info = setup_distributed("cpu")
        torch.save({"state": res.model.state_dict(), "steps": res.steps, "tokens": res.tokens,
                    "loss": res.train_loss, "val": res.val_loss, "world": info.world_size,
                    "is_main": info.is_main, "final": str(res.final_dir)}, Path(out) / f"rank{rank}.pt")
    finally:
        cleanup_distributed()


def test_two_process_gloo_run_keeps_ranks_identical(prepared, tmp_path):  # noqa: F811
    cfg = tiny_cfg(prepared, tmp_path / "run", max_steps=3, eval_every=3, ckpt_every=2)
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and r0["is_main"] and not r1["is_main"]
    for key in ("steps", "tokens", "loss", "val"):
        assert r0[key] == r1[key], key
    assert r0["steps"] == 3
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    assert r1["final"] == "None" and Path(r0["final"]).is_dir()
    # only rank 0 wrote the log and the checkpoints
    rows = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert len(rows) == 4
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]

"""learn.save / learn.load: round trips, wrapped models, and clear errors before any change."""

from __future__ import annotations

import errno
import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import tiny_learner
from trainbus import CheckpointError, Learner


def trained(model: nn.Module | None = None, *, momentum: float = 0.9) -> Learner:
    """A tiny learner with SGD momentum (so the optimizer has state), after one epoch."""
    learn = tiny_learner(model=model)
    learn.opt.param_groups[0]["momentum"] = momentum
    learn.fit(1)
    return learn


def snapshot(learn: Learner) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Copies of the weights and of the optimizer's momentum buffers."""
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    buffers = [s["momentum_buffer"].clone() for s in learn.opt.state.values()]
    return weights, buffers


def assert_same(a: Learner, b: Learner) -> None:
    (wa, ba), (wb, bb) = snapshot(a), snapshot(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(ba) == len(bb) and all(torch.equal(x, y) for x, y in zip(ba, bb, strict=True))


def test_save_then_load_restores_weights_and_optimizer(tmp_path: Path) -> None:
    learn = trained()
    written = learn.save(tmp_path / "sub" / "model.pt")
    assert written == tmp_path / "sub" / "model.pt"
    other = tiny_learner(model=nn.Linear(2, 1))
    other.opt.param_groups[0]["momentum"] = 0.9
    other.load(written)
    assert_same(learn, other)
    # Training goes on identically from there.
    learn.fit(1)
    other.fit(1)
    assert_same(learn, other)
    assert learn.recorder.losses == other.recorder.losses


def test_with_opt_false_saves_and_loads_the_weights_only(tmp_path: Path) -> None:
    learn = trained()
    learn.save(tmp_path / "w.pt", with_opt=False)
    other = tiny_learner(model=nn.Linear(2, 1))
    with pytest.raises(CheckpointError, match=r"w\.pt holds no optimizer state.*with_opt=False"):
        other.load(tmp_path / "w.pt")
    other.load(tmp_path / "w.pt", with_opt=False)
    assert torch.equal(other.model.state_dict()["weight"], learn.model.state_dict()["weight"])
    assert not other.opt.state


def test_wrapped_models_save_the_plain_names(tmp_path: Path) -> None:
    learn = tiny_learner(model=nn.DataParallel(nn.Linear(2, 1)))
    learn.save(tmp_path / "dp.pt")
    plain = tiny_learner(model=nn.Linear(2, 1))
    plain.load(tmp_path / "dp.pt")  # no "module." prefix to strip
    saved = torch.load(tmp_path / "dp.pt", weights_only=True)
    assert set(saved["model"]) == {"weight", "bias"}
    # torch.compile's wrapper (not compiled until called): no "_orig_mod." prefix either.
    with warnings.catch_warnings():  # importing torch.compile's machinery warns
        warnings.simplefilter("ignore", DeprecationWarning)
        wrapper: Any = torch.compile(nn.Linear(2, 1))  # pyright: ignore[reportUnknownMemberType]
    assert isinstance(wrapper, nn.Module) and hasattr(wrapper, "_orig_mod")
    compiled = tiny_learner(model=wrapper)
    compiled.load(tmp_path / "dp.pt")
    compiled.save(tmp_path / "compiled.pt")
    assert set(torch.load(tmp_path / "compiled.pt", weights_only=True)["model"]) == {
        "weight",
        "bias",
    }


def unchanged_after(learn: Learner, path: Path, match: str, **kwargs: Any) -> None:
    """``learn.load(path)`` raises CheckpointError matching ``match`` and changes nothing."""
    before = snapshot(learn)
    with pytest.raises(CheckpointError, match=match):
        learn.load(path, **kwargs)
    after = snapshot(learn)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert all(torch.equal(x, y) for x, y in zip(before[1], after[1], strict=True))


def test_a_truncated_or_random_file_is_named(tmp_path: Path) -> None:
    learn = trained()
    learn.save(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    unchanged_after(
        learn, tmp_path / "cut.pt", r"cannot read checkpoint .*cut\.pt: it is truncated"
    )
    (tmp_path / "noise.pt").write_bytes(os.urandom(256))
    unchanged_after(learn, tmp_path / "noise.pt", r"cannot read checkpoint .*noise\.pt")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint file at .*missing\.pt"):
        learn.load(tmp_path / "missing.pt")


def test_a_foreign_or_newer_file_is_named(tmp_path: Path) -> None:
    learn = trained()
    torch.save(learn.model.state_dict(), tmp_path / "plain.pt")
    unchanged_after(learn, tmp_path / "plain.pt", r"plain\.pt is not a trainbus checkpoint")
    learn.save(tmp_path / "good.pt")
    ckpt = torch.load(tmp_path / "good.pt", weights_only=True)
    ckpt["trainbus_checkpoint"] = 99
    torch.save(ckpt, tmp_path / "new.pt")
    unchanged_after(learn, tmp_path / "new.pt", r"new\.pt has checkpoint format version 99, newer")


def test_code_in_a_file_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (Path.write_text, (str(marker), "x"))

    buffer = io.BytesIO()
    torch.save({"trainbus_checkpoint": 1, "model": {}, "x": Evil()}, buffer)
    (tmp_path / "evil.pt").write_bytes(buffer.getvalue())
    unchanged_after(trained(), tmp_path / "evil.pt", r"cannot read checkpoint .*evil\.pt")
    assert not marker.exists()
    assert zipfile.is_zipfile(tmp_path / "evil.pt")  # a real torch file, refused on content
    assert pickle.HIGHEST_PROTOCOL >= 2


def test_a_checkpoint_of_another_model_names_the_key_and_shapes(tmp_path: Path) -> None:
    trained().save(tmp_path / "small.pt")
    big = tiny_learner(model=nn.Linear(2, 3))
    unchanged_after(
        big,
        tmp_path / "small.pt",
        r"small\.pt does not fit the model \(Linear\): 'weight' has shape \(1, 2\) in the "
        r"checkpoint and \(3, 2\) in the model",
    )
    deeper = trained(model=nn.Sequential(nn.Linear(2, 1)))
    unchanged_after(deeper, tmp_path / "small.pt", r"small\.pt does not fit .*no '0\.weight'")
    extra = trained(model=nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)))
    extra.save(tmp_path / "two.pt")
    one = tiny_learner(model=nn.Sequential(nn.Linear(2, 2)))
    unchanged_after(one, tmp_path / "two.pt", r"two\.pt does not fit .*it has '1\.weight'")
    # strict=False loads the keys that are there (shapes must still fit).
    one.load(tmp_path / "two.pt", strict=False, with_opt=False)
    assert torch.equal(one.model.state_dict()["0.weight"], extra.model.state_dict()["0.weight"])


def test_a_checkpoint_of_another_optimizer_is_named(tmp_path: Path) -> None:
    trained().save(tmp_path / "sgd.pt")
    adam = Learner(nn.Linear(2, 1), tiny_learner().dls, nn.functional.mse_loss, torch.optim.Adam)
    adam.fit(1)
    with pytest.raises(
        CheckpointError, match=r"sgd\.pt holds the state of a torch\.optim\.sgd\.SGD"
    ):
        adam.load(tmp_path / "sgd.pt")
    adam.load(tmp_path / "sgd.pt", with_opt=False)  # the weights alone fit


def test_a_failed_write_leaves_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learn = trained()
    target = tmp_path / "model.pt"
    learn.save(target)
    before = target.read_bytes()
    learn.fit(1)

    def full_disk(obj: object, file: io.BufferedWriter) -> None:
        file.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*model\.pt \(No space") as info:
        learn.save(target)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left

"""Training harness: sample-counted metrics, the recipe's schedule, exact resume, DDP on gloo, latency."""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pyns.data.augment import Augment, BatchLoader, default_augment
from pyns.data.datasets import load_dataset
from pyns.errors import RunError
from pyns.train.latency import measure_latency
from pyns.runfiles import read_jsonl
from pyns.train.loop import (
    BEST_MODEL_FILE,
    CHECKPOINT_FILE,
    METRICS_FILE,
    RESULT_FILE,
    evaluate,
    make_loaders,
    train,
)
from pyns.train.checkpoint import load_checkpoint
from pyns.train.recipe import TrainRecipe

# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


class FixedLogits(nn.Module):
    """Outputs its input as logits. The parameter only receives zero gradients, so training cannot
    change predictions: train-time loss and accuracy are then known in advance."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) + 0.0 * self.unused


# Three batches of sizes 4, 4, 2 (an unequal last batch) with 4, 0 and 2 correct predictions:
# accuracy over samples = 6/10 = 0.6, while the mean of per-batch accuracies would be (1 + 0 + 1)/3.
_LOGITS = [
    [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.1, 0.0]],
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 4.0, 0.0]],
    [[0.0, 0.0, 2.0], [0.0, 1.5, 0.0]],
]
_LABELS = [[0, 1, 2, 0], [1, 2, 0, 2], [2, 1]]


def _fixed_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.tensor(x), torch.tensor(y)) for x, y in zip(_LOGITS, _LABELS)]


def _hand_loss() -> float:
    """Mean cross-entropy over all 10 samples, computed in numpy: log-sum-exp minus the true logit."""
    total = 0.0
    for rows, labels in zip(_LOGITS, _LABELS):
        for row, label in zip(rows, labels):
            row = np.asarray(row, dtype=np.float64)
            total += np.log(np.exp(row).sum()) - row[label]
    return total / 10


def small_cnn(seed: int, *, bn: bool = True, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.AvgPool2d(4), nn.Flatten()]  # 8x8 digits -> [B, 8, 2, 2] -> [B, 32]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(32, 10))
    return nn.Sequential(*layers)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP spinning on a shared 2-core machine costs 3-5x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple:
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _manual_accuracy(model: nn.Module, dataset) -> tuple[int, float]:
    """Correct count and summed loss over the whole split in one forward pass, normalised by hand."""
    mean = torch.tensor(dataset.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std).view(1, -1, 1, 1)
    x = (dataset.images.float() / 255.0 - mean) / std
    model.eval()
    with torch.no_grad():
        logits = model(x)
    correct = int((logits.argmax(1) == dataset.labels).sum())
    loss = float(nn.functional.cross_entropy(logits.double(), dataset.labels, reduction="sum"))
    return correct, loss


def _leftover_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


# ----------------------------------------------------------------------------------------------------
# Metrics counted over samples
# ----------------------------------------------------------------------------------------------------


def test_evaluate_counts_samples_over_unequal_last_batch() -> None:
    accuracy, loss = evaluate(FixedLogits(), _fixed_batches())
    assert accuracy == 0.6  # not (1 + 0 + 1) / 3
    assert loss == pytest.approx(_hand_loss(), rel=1e-6)


def test_evaluate_with_batch_loader_matches_one_full_pass(digits) -> None:
    _, test_set = digits
    model = small_cnn(0)
    n = len(test_set)
    loader = BatchLoader(test_set, 100, train=False)
    assert n % 100 != 0 and len(loader) == math.ceil(n / 100)  # the last batch is a short one
    accuracy, loss = evaluate(model, loader)
    correct, loss_sum = _manual_accuracy(model, test_set)
    assert 0 < correct < n  # a random network: neither trivially 0 nor 1
    assert accuracy == correct / n
    assert loss == pytest.approx(loss_sum / n, rel=1e-5)


def test_train_metrics_are_sample_counted_and_logged(tmp_path: Path) -> None:
    batches = _fixed_batches()
    recipe = TrainRecipe(lr=0.1, epochs=2, milestones=(1,))
    result = train(FixedLogits(), batches, batches, recipe, out_dir=tmp_path, progress=False)
    for record in result.history:
        assert record.train_acc == 0.6 and record.test_acc == 0.6
        assert record.train_loss == pytest.approx(_hand_loss(), rel=1e-6)
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "time"}
    assert rows == [dataclasses.asdict(r) for r in result.history]
    summary = json.loads((tmp_path / RESULT_FILE).read_text())
    assert summary["final_test_acc"] == 0.6 and summary["best_test_acc"] == 0.6
    assert "max" in summary["best_test_acc_note"]
    assert "final test accuracy" in result.summary() and "max over epochs" in result.summary()


def test_diverged_training_stops_with_a_clear_error(tmp_path: Path) -> None:
    class NaNLogits(FixedLogits):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * float("nan")

    with pytest.raises(RunError, match="diverged"):
        train(NaNLogits(), _fixed_batches(), _fixed_batches(), TrainRecipe(epochs=2), out_dir=tmp_path, progress=False)
    assert not (tmp_path / CHECKPOINT_FILE).exists()


# ----------------------------------------------------------------------------------------------------
# Recipe and schedule
# ----------------------------------------------------------------------------------------------------


def test_recipe_defaults_are_the_papers() -> None:
    cifar = TrainRecipe()
    assert (cifar.lr, cifar.momentum, cifar.weight_decay, cifar.batch_size) == (0.1, 0.5, 5e-4, 128)
    assert (cifar.epochs, cifar.milestones, cifar.gamma) == (300, (100, 200, 250), 0.1)
    assert TrainRecipe.cifar() == cifar
    tiny = TrainRecipe.tinyimagenet()
    assert (tiny.epochs, tiny.milestones, tiny.batch_size, tiny.lr) == (150, (50, 100), 128, 0.1)
    assert TrainRecipe.tinyimagenet(epochs=10).epochs == 10
    assert cifar.replace(lr=0.05).lr == 0.05 and cifar.lr == 0.1
    # Hand-computed: 0.1 for epochs 0..99, 0.01 for 100..199, 0.001 for 200..249, 0.0001 after.
    expected = {0: 0.1, 99: 0.1, 100: 0.01, 199: 0.01, 200: 0.001, 249: 0.001, 250: 0.0001, 299: 0.0001}
    for epoch, lr in expected.items():
        assert cifar.lr_at(epoch) == pytest.approx(lr, rel=1e-12)
    for bad in ({"lr": 0}, {"milestones": (5, 3)}, {"momentum": 1.0}, {"epochs": 0}, {"amp_dtype": "fp8"},
                {"channels_last": "yes"}):
        with pytest.raises(RunError):
            TrainRecipe(**bad)


def test_channels_last_defaults_to_the_cpu_only() -> None:
    cpu, cuda, meta = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
    assert [TrainRecipe().uses_channels_last(d) for d in (cpu, cuda, meta)] == [True, False, False]
    assert [TrainRecipe(channels_last=True).uses_channels_last(d) for d in (cpu, cuda, meta)] == [True, True, False]
    assert [TrainRecipe(channels_last=False).uses_channels_last(d) for d in (cpu, cuda)] == [False, False]


def test_lr_schedule_follows_milestones(tmp_path: Path) -> None:
    data = load_dataset("synthetic", num_samples=40, test_samples=8, resolution=8, channels=1)
    loader = BatchLoader(data, 20, train=True)
    recipe = TrainRecipe(lr=0.4, gamma=0.5, batch_size=20, epochs=7, milestones=(2, 5))
    result = train(small_cnn(0, bn=False), loader, loader, recipe, out_dir=tmp_path, progress=False)
    hand = [0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1]  # x0.5 entering the 3rd and 6th epochs
    assert [r.lr for r in result.history] == pytest.approx(hand, rel=1e-12)
    assert [row["lr"] for row in read_jsonl(tmp_path / METRICS_FILE)] == pytest.approx(hand, rel=1e-12)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["epoch"] == 7


def test_make_loaders_uses_recipe_batch_and_dataset_augment(digits) -> None:
    train_set, test_set = digits
    recipe = TrainRecipe(batch_size=64)
    train_loader, test_loader = make_loaders(train_set, test_set, recipe, device="cpu")
    assert (train_loader.batch_size, train_loader.train, train_loader.world_size) == (64, True, 1)
    assert train_loader.augment is None and default_augment("digits").is_identity
    assert test_loader.train is False and len(test_loader) == math.ceil(len(test_set) / 64)


# ----------------------------------------------------------------------------------------------------
# Checkpoint and resume
# ----------------------------------------------------------------------------------------------------


class InterruptingLoader(BatchLoader):
    """Raises KeyboardInterrupt (as Ctrl-C would) before handing out batch `at_batch` of epoch `at_epoch`."""

    def __init__(self, *args, at_epoch: int, at_batch: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.at = (at_epoch, at_batch)

    def __iter__(self):
        epoch = self.epoch
        for index, batch in enumerate(super().__iter__()):
            if (epoch, index) == self.at:
                raise KeyboardInterrupt
            yield batch


RESUME_RECIPE = TrainRecipe(lr=0.2, batch_size=64, epochs=3, milestones=(2,), seed=3, deterministic=True)


def _resume_loaders(digits, cls=BatchLoader, **extra):
    train_set, test_set = digits
    # Augmentation on (crop + flip) so the loader's own random stream must be restored too.
    augment = Augment(pad=1, flip=True)
    return (cls(train_set, 64, train=True, augment=augment, seed=11, **extra),
            BatchLoader(test_set, 64, train=False, seed=11))


def _model() -> nn.Module:
    return small_cnn(0, bn=True, dropout=0.3)  # dropout: the global torch RNG must be restored


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("uninterrupted")
    model = _model()
    result = train(model, *_resume_loaders(digits), RESUME_RECIPE, out_dir=out, progress=False)
    return result, {k: v.clone() for k, v in model.state_dict().items()}, out


def _assert_same_run(result, model: nn.Module, out: Path, uninterrupted) -> None:
    reference, reference_weights, reference_out = uninterrupted
    weights = model.state_dict()
    assert weights.keys() == reference_weights.keys()
    for key in weights:  # bit-identical, BN running statistics included
        assert torch.equal(weights[key], reference_weights[key]), key
    assert _without_time([dataclasses.asdict(r) for r in result.history]) == _without_time(
        [dataclasses.asdict(r) for r in reference.history])
    assert (result.final_test_acc, result.best_test_acc, result.best_epoch) == (
        reference.final_test_acc, reference.best_test_acc, reference.best_epoch)
    assert _without_time(read_jsonl(out / METRICS_FILE)) == _without_time(read_jsonl(reference_out / METRICS_FILE))
    best, reference_best = (torch.load(p / BEST_MODEL_FILE, weights_only=True) for p in (out, reference_out))
    assert all(torch.equal(best[k], reference_best[k]) for k in reference_best)
    assert _leftover_temporaries(out) == []


def test_resume_after_ctrl_c_mid_epoch_equals_uninterrupted_run(digits, uninterrupted, tmp_path: Path) -> None:
    reference = uninterrupted[0]
    assert reference.final_test_acc > 0.3  # it did learn (chance is 0.1): the comparison below is not between two no-ops
    loaders = _resume_loaders(digits, InterruptingLoader, at_epoch=2, at_batch=4)
    with pytest.raises(KeyboardInterrupt):
        train(_model(), *loaders, RESUME_RECIPE, out_dir=tmp_path, progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["epoch"] == 2
    assert [row["epoch"] for row in read_jsonl(tmp_path / METRICS_FILE)] == [1, 2]
    assert _leftover_temporaries(tmp_path) == []

    with pytest.raises(RunError, match="already holds"):
        train(_model(), *_resume_loaders(digits), RESUME_RECIPE, out_dir=tmp_path, progress=False)
    with pytest.raises(RunError, match=r"recipe\.lr: was 0\.2, now 0\.1"):
        train(_model(), *_resume_loaders(digits), RESUME_RECIPE.replace(lr=0.1), out_dir=tmp_path, resume=True)

    # A "new process": another initialisation and another global RNG state, all overridden by the checkpoint.
    model = small_cnn(123, bn=True, dropout=0.3)
    torch.manual_seed(999)
    result = train(model, *_resume_loaders(digits), RESUME_RECIPE, out_dir=tmp_path, resume=True, progress=False)
    _assert_same_run(result, model, tmp_path, uninterrupted)


def test_ctrl_c_during_checkpoint_write_saves_that_epoch(digits, uninterrupted, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save
    interrupted = []

    def save_interrupted_once(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("epoch") == 2 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # data in the temporary file, rename not done yet

    monkeypatch.setattr(torch, "save", save_interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        train(_model(), *_resume_loaders(digits), RESUME_RECIPE, out_dir=tmp_path, progress=False)
    monkeypatch.undo()
    assert interrupted
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["epoch"] == 2  # the finished epoch was still saved
    assert [row["epoch"] for row in read_jsonl(tmp_path / METRICS_FILE)] == [1, 2]
    assert _leftover_temporaries(tmp_path) == []
    model = _model()
    result = train(model, *_resume_loaders(digits), RESUME_RECIPE, out_dir=tmp_path, resume=True, progress=False)
    _assert_same_run(result, model, tmp_path, uninterrupted)


def test_resume_without_checkpoint_is_refused(digits, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no checkpoint.pt"):
        train(_model(), *_resume_loaders(digits), RESUME_RECIPE, out_dir=tmp_path, resume=True)


# ----------------------------------------------------------------------------------------------------
# DistributedDataParallel, 2 CPU processes on gloo
# ----------------------------------------------------------------------------------------------------

DDP_SCRIPT = '''
import sys
from pathlib import Path

import torch
from torch import nn

from pyns.data.augment import Augment, BatchLoader
from pyns.data.datasets import load_dataset
from pyns.train.distributed import cleanup_distributed, setup_distributed
from pyns.train.loop import train
from pyns.train.recipe import TrainRecipe

PER_RANK_BATCH = 32
PLAIN = TrainRecipe(lr=0.2, batch_size=2 * PER_RANK_BATCH, epochs=2, milestones=(1,), deterministic=True)
BN = TrainRecipe(lr=0.1, batch_size=2 * PER_RANK_BATCH, epochs=2, milestones=(1,), deterministic=True)


def net(bn):
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 8, 3, padding=1)] + ([nn.BatchNorm2d(8)] if bn else [])
    return nn.Sequential(*layers, nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(32, 10))


def datasets():
    # 8x8 grey synthetic images: 4 steps per epoch per rank, a short last test batch (90 = 50 + 40).
    options = dict(num_samples=256, test_samples=90, resolution=8, channels=1)
    return load_dataset("synthetic", split="train", **options), load_dataset("synthetic", split="test", **options)


def loaders(rank, world_size, augment=None):
    train_set, test_set = datasets()
    return (BatchLoader(train_set, PER_RANK_BATCH, train=True, augment=augment, seed=5, rank=rank,
                        world_size=world_size),
            BatchLoader(test_set, 50, train=False, rank=rank, world_size=world_size))


def main(out):
    ctx = setup_distributed("cpu")
    aug = Augment(pad=1, flip=True)
    runs = [("plain", False, None, PLAIN, False), ("bn", True, aug, BN, False),
            ("bn_resumed", True, aug, BN.replace(epochs=1), False), ("bn_resumed", True, aug, BN, True)]
    for name, bn, augment, recipe, resume in runs:
        model = net(bn)
        torch.manual_seed(100 + ctx.rank)  # ranks differ in global RNG: DDP must still agree
        train(model, *loaders(ctx.rank, ctx.world_size, augment), recipe, out_dir=out / name, resume=resume,
              progress=False)
        torch.save(model.state_dict(), out / f"{name}_rank{ctx.rank}.pt")
    cleanup_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
'''


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location("ddp_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ddp_two_cpu_processes_match_single_process_combined_batch(tmp_path: Path) -> None:
    script = tmp_path / "ddp_script.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "runs"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    helpers = _load_script(script)

    def weights(name: str, rank: int) -> dict:
        return torch.load(out / f"{name}_rank{rank}.pt", weights_only=True)

    # Both ranks hold one model (BN running statistics included).
    for name in ("plain", "bn", "bn_resumed"):
        a, b = weights(name, 0), weights(name, 1)
        assert all(torch.equal(a[k], b[k]) for k in a), name

    # Oracle: one process, plain SGD on the concatenation of both ranks' batches, step by step.
    train_set, test_set = helpers.datasets()
    oracle = helpers.net(False)
    recipe = helpers.PLAIN
    optimizer = torch.optim.SGD(oracle.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    shards = helpers.loaders(0, 2)[0], helpers.loaders(1, 2)[0]
    oracle_losses = []
    for epoch in range(recipe.epochs):
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * (recipe.gamma if epoch >= 1 else 1.0)
        loss_sum, seen = 0.0, 0
        for (x0, y0), (x1, y1) in zip(*shards):
            x, y = torch.cat([x0, x1]), torch.cat([y0, y1])
            loss = nn.functional.cross_entropy(oracle(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
        oracle_losses.append(loss_sum / seen)
    ddp = weights("plain", 0)
    for key, value in oracle.state_dict().items():
        torch.testing.assert_close(ddp[key], value, atol=1e-5, rtol=1e-4)
    rows = read_jsonl(out / "plain" / METRICS_FILE)
    assert [row["epoch"] for row in rows] == [1, 2]  # written once, by rank 0 only
    assert [row["train_loss"] for row in rows] == pytest.approx(oracle_losses, rel=1e-5)

    # The reported accuracy is the accuracy of the final model on the whole test set.
    oracle.load_state_dict(ddp)
    correct, _ = _manual_accuracy(oracle, test_set)
    assert rows[-1]["test_acc"] == correct / len(test_set)
    assert json.loads((out / "plain" / RESULT_FILE).read_text())["final_test_acc"] == correct / len(test_set)

    # DDP checkpoint/resume: 1 epoch, then resume to 2 == 2 epochs straight.
    a, b = weights("bn", 0), weights("bn_resumed", 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _without_time(read_jsonl(out / "bn" / METRICS_FILE)) == _without_time(
        read_jsonl(out / "bn_resumed" / METRICS_FILE))


# ----------------------------------------------------------------------------------------------------
# Latency
# ----------------------------------------------------------------------------------------------------


class _Sleeper(nn.Module):
    """Slow during warm-up (30 ms), then alternately 2 and 6 ms: the mean must only see the latter."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup = warmup
        self.shapes: list[tuple] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = len(self.shapes)
        self.shapes.append(tuple(x.shape))
        time.sleep(0.030 if call < self.warmup else (0.002 if (call - self.warmup) % 2 == 0 else 0.006))
        return x


def test_latency_protocol() -> None:
    defaults = inspect.signature(measure_latency).parameters
    assert (defaults["batch_size"].default, defaults["warmup"].default, defaults["iters"].default) == (100, 20, 80)
    model = _Sleeper(warmup=3)
    result = measure_latency(model, (3, 5, 5), "cpu", batch_size=7, warmup=3, iters=6)
    assert model.shapes == [(7, 3, 5, 5)] * 9  # 3 warm-up + 6 timed batches
    assert model.training  # mode restored
    assert 4.0 <= result.ms_per_batch < 20.0  # mean of 2,6,2,6,2,6 ms (+ sleep overshoot); warm-up excluded
    assert 1.5 <= result.std_ms < 10.0  # sample std of 2,6,2,6,2,6 is 2.19
    assert result.images_per_s == pytest.approx(7 / (result.ms_per_batch / 1e3), rel=1e-12)
    with pytest.raises(RunError):
        measure_latency(model, (1, 3, 5, 5), "cpu")

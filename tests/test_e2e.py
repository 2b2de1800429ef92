"""The user's jobs end to end on the CPU: predict on real image files, converting models both ways, training with
torchrun (two gloo processes), exact resume (also after SIGTERM), examples/train.py's checks and atomic saves,
torch.export and torch.compile."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision

import resnet_ext
from conftest import randomize_bn, rel_err, tv_model
from resnet_ext.__main__ import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "examples", "train.py")


# Subprocesses import the same resnet_ext as this process (the source tree when it is built in place).
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(resnet_ext.__file__)),
                                      os.environ.get("PYTHONPATH", "")])}


def run(cmd, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV)


@pytest.fixture(scope="module")
def images_and_checkpoint(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("predict")
    g = torch.Generator().manual_seed(0)
    paths = []
    for i, ext in enumerate(["png", "jpg", "png"]):
        arr = (torch.rand(180 + 20 * i, 240, 3, generator=g) * 255).to(torch.uint8).numpy()
        path = str(d / f"img{i}.{ext}")
        Image.fromarray(arr).save(path)
        paths.append(path)
    torch.manual_seed(0)
    tv = randomize_bn(tv_model("resnet50", seed=0)).eval()  # module-scoped: the per-test count is not reset here
    ckpt = str(d / "rn50.pt")
    torch.save(tv.state_dict(), ckpt)
    return paths, ckpt, tv, d


def test_predict_matches_torchvision_with_the_same_weights_and_transform(images_and_checkpoint):
    paths, ckpt, tv, _ = images_and_checkpoint
    out = run([sys.executable, "-m", "resnet_ext", "predict", *paths, "--arch", "resnet50", "--weights", ckpt,
               "--json", "--device", "cpu"])
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    transform = torchvision.models.ResNet50_Weights.DEFAULT.transforms()
    categories = torchvision.models.ResNet50_Weights.DEFAULT.meta["categories"]
    from PIL import Image

    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        probs = tv(batch).softmax(1)
    top = probs.topk(5, 1)
    assert [r["image"] for r in results] == paths
    for i, r in enumerate(results):
        assert [t["index"] for t in r["top"]] == top.indices[i].tolist()
        assert [t["class"] for t in r["top"]] == [categories[j] for j in top.indices[i].tolist()]
        assert max(abs(t["prob"] - p) for t, p in zip(r["top"], top.values[i].tolist())) < 1e-4


def test_predict_text_output(images_and_checkpoint, capsys):
    paths, ckpt, _, _ = images_and_checkpoint
    assert cli(["predict", paths[0], "--weights", ckpt, "--topk", "3", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == paths[0] and len(lines) == 4 and lines[1].lstrip().startswith("1. ")


def test_predict_bad_inputs_get_one_line_errors(images_and_checkpoint, capsys):
    paths, ckpt, _, d = images_and_checkpoint
    garbage = d / "broken.png"
    garbage.write_bytes(b"this is not an image")
    rn18 = d / "rn18.pt"
    torch.save(tv_model("resnet18").state_dict(), rn18)
    cases = [
        ([str(d / "missing.jpg"), "--weights", ckpt], "missing.jpg: no such file"),
        ([str(garbage), "--weights", ckpt], "broken.png: cannot read image"),
        ([paths[0], "--weights", str(rn18)], "does not fit resnet50"),
        ([paths[0], "--weights", "IMAGENET1K_V9"], "unknown weights 'IMAGENET1K_V9' for resnet50"),
        ([paths[0], "--weights", str(d / "nope.pt")], "nope.pt: no such file"),
    ]
    for argv, message in cases:
        assert cli(["predict", *argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    # Through the real entry point: exit code 2 and no traceback.
    out = run([sys.executable, "-m", "resnet_ext", "predict", str(garbage), "--weights", ckpt])
    assert out.returncode == 2 and "Traceback" not in out.stderr and "cannot read image" in out.stderr


def test_from_and_to_torchvision_share_parameters():
    torch.manual_seed(0)
    tv = randomize_bn(tv_model("resnet101", replace_stride_with_dilation=[False, True, True])).eval()
    ours = resnet_ext.from_torchvision(tv)
    assert isinstance(ours, resnet_ext.ResNet) and not ours.training
    for (k, a), (k2, b) in zip(ours.state_dict(keep_vars=True).items(), tv.state_dict(keep_vars=True).items()):
        assert k == k2 and a is b  # the same objects: nothing copied
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ours(x), tv(x)) < 1e-4
    back = ours.to_torchvision()
    assert type(back) is torchvision.models.ResNet and back.fc.weight is tv.fc.weight
    rn18 = resnet_ext.from_torchvision(tv_model("resnet18"))
    assert isinstance(rn18.layer1[0], resnet_ext.BasicBlock)


def test_conversions_keep_shared_modules_shared():
    """A module at two places (a ReLU shared by the stem and a custom fc, a block in two layers) is one module
    after either conversion, as in the source: a hook registered on it afterwards meets every call."""
    tv = tv_model("resnet18", num_classes=10).eval()
    tv.fc = torch.nn.Sequential(tv.relu, torch.nn.Linear(512, 10))
    tv.layer4.append(tv.layer3[1])
    ours = resnet_ext.from_torchvision(tv)
    assert ours.fc[0] is ours.relu and ours.layer4[2] is ours.layer3[1]
    assert len(list(ours.modules())) == len(list(tv.modules()))
    back = ours.to_torchvision()
    assert back.fc[0] is back.relu and back.layer4[2] is back.layer3[1]


def test_torchrun_two_gloo_processes_end_with_identical_weights(tmp_path):
    out = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN,
               "--fake-data", "--steps", "3", "--device", "cpu", "--image-size", "64", "--batch-size", "2",
               "--fake-size", "16", "--sync-bn", "--output-dir", str(tmp_path)], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    digests = dict(line.split("(rank ")[1].split("): ") for line in out.stdout.splitlines()
                   if line.startswith("final weights sha256"))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]


@pytest.mark.parametrize("frozen", [False, True], ids=["default", "frozen"])
def test_export_gives_torchvisions_portable_program(tmp_path, frozen):
    """torch.export of an eval model records torchvision's ATen ops, as torchvision's export does: the saved program
    loads and runs in a process that never imports resnet_ext (it held resnet_ext::conv_bn_act, which failed to
    load there, to decompose and to convert to ONNX), with torchvision's numbers; the model still runs the engine
    after."""
    torch.manual_seed(0)
    tv = randomize_bn(tv_model("resnet50", num_classes=10)).eval()
    model = resnet_ext.resnet50(num_classes=10).eval()
    model.load_state_dict(tv.state_dict())
    if frozen:
        resnet_ext.freeze(model)
    x = torch.randn(2, 3, 64, 64)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert targets == {str(n.target) for n in torch.export.export(tv, (x,)).graph.nodes if n.op == "call_function"}
    torch.export.save(ep, tmp_path / "ep.pt2")
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; ep = torch.export.load(sys.argv[1] + '/ep.pt2'); x = torch.load(sys.argv[1] + '/x.pt');"
            " torch.save(ep.module()(x), sys.argv[1] + '/y.pt'); assert 'resnet_ext' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env={**os.environ, "PYTHONPATH": ""},
                   cwd=tmp_path)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), tv(x))
        resnet_ext.reset_path_counts()
        assert rel_err(model(x), tv(x)) < 1e-5
    assert resnet_ext.path_counts().get("flat_forwards") == 1


def test_compile_fullgraph_train_step_matches_eager(train_mode):
    """One graph, forward and backward. Inductor where the graph holds resnet_ext's training ops ("fused"); "auto"
    on the CPU traces torch's own BN and ReLU (as torchvision's model does), whose lowering is torch's: AOT autograd
    there (inductor's C++ compiles took 60-70 s per mode on a cold cache, a 2-core Zen 3)."""
    torch.manual_seed(0)
    eager = resnet_ext.ResNet(resnet_ext.Bottleneck, [1, 1, 1, 1], num_classes=10).train()
    compiled = resnet_ext.ResNet(resnet_ext.Bottleneck, [1, 1, 1, 1], num_classes=10).train()
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(compiled, fullgraph=True, backend="inductor" if train_mode == "fused" else "aot_eager")
    x = torch.randn(4, 3, 32, 32)
    out_c, out_e = step(x), eager(x)
    out_c.square().mean().backward()
    out_e.square().mean().backward()
    assert rel_err(out_c, out_e) < 1e-3
    assert rel_err(compiled.conv1.weight.grad, eager.conv1.weight.grad) < 1e-2
    assert rel_err(compiled.layer1[0].bn1.running_var, eager.layer1[0].bn1.running_var) < 1e-5
    assert int(compiled.layer1[0].bn1.num_batches_tracked) == 1


def test_compiled_train_mode_recompiles_as_often_as_torchvision():
    """Batches whose pixels cross the eager memory reuse's threshold (`cpu.REUSE_PIXELS`) add no recompile: dynamo
    frames per model as torchvision's."""
    from torch._dynamo.utils import counters

    frames = []
    for model in (tv_model("resnet18"), resnet_ext.resnet18()):
        torch._dynamo.reset()
        counters.clear()
        step = torch.compile(model.train(), backend="eager")
        for n in (2, 3, 4, 5):  # at 64x64 the threshold (16,384 pixels) lies between 3 and 4
            step(torch.randn(n, 3, 64, 64))
        frames.append(counters["frames"]["total"])
    torch._dynamo.reset()
    assert frames[1] == frames[0], frames


# ---------------------------------------------------------------------------------------------------------------
def test_predict_defaults_to_every_class_of_a_small_model_and_writes_nan_as_null(images_and_checkpoint, capsys):
    """--topk's default is 5 or every class of a model with fewer (a 3-class checkpoint failed without --topk); a
    NaN probability (NaN weights) is JSON's null, not the bare NaN strict parsers refuse (helper-53)."""
    paths, _, _, d = images_and_checkpoint
    small = tv_model("resnet18", num_classes=3)
    torch.save(small.state_dict(), d / "three.pt")
    assert cli(["predict", paths[0], "--arch", "resnet18", "--weights", str(d / "three.pt"), "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 3
    with torch.no_grad():
        small.fc.bias.fill_(float("nan"))
    torch.save(small.state_dict(), d / "nan.pt")
    assert cli(["predict", paths[0], "--arch", "resnet18", "--weights", str(d / "nan.pt"), "--json",
                "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and [t["prob"] for t in json.loads(text)[0]["top"]] == [None] * 3


# examples/train.py: checks before work, signals, atomic saves, validated resume (resnet18, 32x32, fast)
# ---------------------------------------------------------------------------------------------------------------

SMALL = ["--fake-data", "--device", "cpu", "--arch", "resnet18", "--image-size", "32", "--batch-size", "2",
         "--fake-size", "8", "--num-classes", "3", "--log-every", "1", "--workers", "0"]


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_example", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_checkpoint(train, tmp_path_factory):
    """A checkpoint written by one in-process step; stale temporaries put there first must be gone after."""
    d = tmp_path_factory.mktemp("train")
    stale = [d / "checkpoint.pt.tmp", d / ".checkpoint.pt.12345.tmp"]
    for f in stale:
        f.write_bytes(b"half a checkpoint")
    assert train.main(SMALL + ["--steps", "1", "--output-dir", str(d)]) == 0
    return d / "checkpoint.pt", stale


def train_fails(train, capsys, argv, *needles):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith("examples/train.py: error: "), out.err
    assert "step " not in out.out, out.out  # failed before any training
    for needle in needles:
        assert needle in out.err, out.err


def test_train_bad_arguments_fail_at_start_in_one_line(train, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    out = ["--output-dir", str(tmp_path / "out")]
    cases = [
        (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
        (["--lr", "-1"], "argument --lr: expected a number in (0, 3.40282e+38]"),
        (["--label-smoothing", "1"], "argument --label-smoothing: expected a number in [0, 1)"),
        (["--image-size", "8"], "argument --image-size: expected an integer >= 32"),
        (["--steps", "0"], "argument --steps"),
        (["--batch-size", "100"], "larger than the data set"),
        (["--output-dir", str(tmp_path / "file")], "exists and is not a directory"),
        (["--output-dir", str(tmp_path / "file" / "sub")], "cannot write there"),
        (["--resume", str(tmp_path / "nope.pt")], "nope.pt: no such file"),
        (["--resume", str(tmp_path)], "is a directory"),
        (["--lr", "1e308"], "argument --lr: expected a number in (0, 3.40282e+38]"),  # was a run that logged lr nan
        (["--weight-decay", "1e308"], "argument --weight-decay"),  # was a traceback from the optimizer
        (["--warmup-epochs", "1e308"], "argument --warmup-epochs"),  # was an OverflowError traceback
        (["--seed", str(2 ** 64)], "argument --seed: expected an integer in [0, 4294967295]"),  # was a traceback
        (["--image-size", "10000000"], "--image-size 10000000: one batch of images alone is"),  # was a traceback
        (["--fake-size", str(10 ** 15)], "argument --fake-size"),  # was an allocation traceback in the sampler
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "argument --device: cuda is not available"))
    for extra, message in cases:
        train_fails(train, capsys, SMALL + out + extra, message)
    data = ["--data", str(tmp_path / "nodata"), "--device", "cpu"] + out
    train_fails(train, capsys, data, "argument --data", "no such directory")
    assert not os.path.exists(tmp_path / "out" / "checkpoint.pt")


def test_weights_take_the_training_scripts_checkpoint(small_checkpoint):
    """`weights=` (and predict's --weights) load examples/train.py's checkpoint as the README says: its model entry,
    beside the optimizer's state, the step and the RNG states (a tensor)."""
    ckpt, _ = small_checkpoint
    state = torch.load(ckpt, weights_only=True)
    m = resnet_ext.resnet18(weights=str(ckpt), num_classes=state["num_classes"])
    assert all(torch.equal(v, state["model"][k]) for k, v in m.state_dict().items())


def test_train_checks_a_resume_checkpoint_in_one_line(train, capsys, small_checkpoint, tmp_path):
    ckpt, stale = small_checkpoint
    assert ckpt.exists() and not any(f.exists() for f in stale)
    assert not [f for f in os.listdir(ckpt.parent) if f.endswith(".tmp")]
    whole = ckpt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(whole[: len(whole) // 2])
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "arch": "resnet34"}, tmp_path / "forged.pt")
    torch.save(state["model"], tmp_path / "weights.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    base = SMALL + ["--steps", "2", "--output-dir", str(tmp_path / "out"), "--resume"]
    train_fails(train, capsys, base + [str(tmp_path / "trunc.pt")], "trunc.pt: not a readable checkpoint")
    train_fails(train, capsys, base + [str(ckpt), "--arch", "resnet34"],
                "a resnet18 checkpoint, but --arch is resnet34")
    train_fails(train, capsys, base + [str(tmp_path / "forged.pt"), "--arch", "resnet34"],
                "forged.pt: does not fit resnet34: ", "missing keys")
    train_fails(train, capsys, base + [str(ckpt), "--num-classes", "4"], "has 3 classes, but this run has 4")
    train_fails(train, capsys, base + [str(tmp_path / "weights.pt")], "holds model weights only")
    train_fails(train, capsys, base + [str(tmp_path / "other.pt")], "not a checkpoint written by this script")
    assert not (tmp_path / "out").exists()  # made for --output-dir by the failed runs, and removed again


def test_train_a_failed_start_removes_only_the_folders_it_made(train, capsys, tmp_path):
    """Folders made for --output-dir by a start that then fails are removed (`a/../b` made `a` too); a folder of the
    user's, made after a failed run in the same process, is not (helper-54's review)."""
    torch.save({"a": 1}, tmp_path / "other.pt")
    resume = ["--steps", "2", "--resume", str(tmp_path / "other.pt")]
    train_fails(train, capsys, SMALL + resume + ["--output-dir", str(tmp_path / "new" / ".." / "out")],
                "not a checkpoint written by this script")
    assert os.listdir(tmp_path) == ["other.pt"]
    train_fails(train, capsys, SMALL + resume + ["--output-dir", str(tmp_path / "mine")], "not a checkpoint")
    (tmp_path / "mine").mkdir()  # then the user makes it, and a run fails before it checks --output-dir
    train_fails(train, capsys, SMALL + ["--steps", "2", "--resume", str(tmp_path / "none.pt")], "no such file")
    assert (tmp_path / "mine").is_dir()


def test_train_resume_says_which_optimizer_arguments_the_checkpoint_overrides(train, capsys, small_checkpoint,
                                                                              tmp_path):
    ckpt, _ = small_checkpoint
    base = SMALL + ["--steps", "2", "--output-dir", str(tmp_path / "out"), "--resume", str(ckpt)]
    assert train.main(base) == 0
    assert "warning" not in capsys.readouterr().err
    assert train.main(base + ["--lr", "50", "--momentum", "0"]) == 0
    err = capsys.readouterr().err
    assert "--lr 50 (the checkpoint's: 0.1), --momentum 0 (the checkpoint's: 0.9) are not applied on --resume" \
        in err, err


def test_train_an_unreadable_image_is_one_line_naming_it_and_the_steps_are_saved(train, capsys, tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (40 * i, 80, 120)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "b" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:  # 7 images, batches of 2 in a seeded order: steps before the bad one
        train.main(["--data", str(tmp_path / "data"), "--device", "cpu", "--arch", "resnet18", "--image-size", "32",
                    "--batch-size", "2", "--workers", "0", "--steps", "3", "--seed", "1", "--output-dir", str(out)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    bad = tmp_path / "data" / "b" / "9.png"
    assert err.count("\n") == 1 and f"an image cannot be read ({bad}: UnidentifiedImageError: " in err, err
    steps = torch.load(out / "checkpoint.pt", weights_only=True)["step"] if (out / "checkpoint.pt").exists() else 0
    assert (f"the state after step {steps} is saved" in err) == (steps > 0), err


def test_train_a_second_signal_inside_a_save_aborts_in_one_line(train, capsys, tmp_path, monkeypatch):
    """The second SIGTERM lands inside torch.save, whose zip writer turns the KeyboardInterrupt into a RuntimeError
    as it unwinds: still the abort (one line, 130, no checkpoint, no temporary file), not a traceback (helper-53)."""
    def interrupted_save(obj, f):
        os.kill(os.getpid(), signal.SIGTERM)  # stop after this step
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # and the second: the handler raises KeyboardInterrupt here
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", interrupted_save)
    assert train.main(SMALL + ["--steps", "3", "--output-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aborted at step 3" in err, err  # the save after the last step
    assert os.listdir(tmp_path) == []


def test_train_saves_atomically_and_removes_the_temporary_file(train, tmp_path, monkeypatch):
    import argparse

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    args = argparse.Namespace(arch="resnet18", num_classes=2, batch_size=2)
    path = str(tmp_path / "checkpoint.pt")
    train.save_checkpoint(path, model, opt, sched, scaler, 1, args, 1)
    good = open(path, "rb").read()
    real_save = torch.save
    for exc, code in ((OSError(28, "No space left on device"), 1), (KeyboardInterrupt(), None)):
        def failing_save(obj, f, exc=exc):
            f.write(b"partial")
            raise exc

        monkeypatch.setattr(torch, "save", failing_save)
        with pytest.raises(SystemExit if code else KeyboardInterrupt):
            train.save_checkpoint(path, model, opt, sched, scaler, 2, args, 1)
        monkeypatch.setattr(torch, "save", real_save)
        assert open(path, "rb").read() == good  # the previous checkpoint is intact
        assert os.listdir(tmp_path) == ["checkpoint.pt"]  # and no temporary file is left


def _signalled_run(cmd, sig, after_step):
    """Starts cmd, sends `sig` once it has printed step `after_step`, returns (returncode, stdout, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    lines = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"step {after_step}/"):
                proc.send_signal(sig)
                break
            assert time.monotonic() < deadline
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(lines) + out, err


# 4 steps per epoch, the warm-up over the first 2: a run stopped within 10 steps resumes mid-schedule, mid-epoch
# or at an epoch's reshuffle.
RESUMABLE = [sys.executable, TRAIN] + SMALL + ["--steps", "40", "--warmup-epochs", "0.5"]


@pytest.fixture(scope="module")
def ten_steps(tmp_path_factory):
    """The checkpoint of an uninterrupted run stopped after 10 steps, for the resumed runs to match bit for bit."""
    d = tmp_path_factory.mktemp("full")
    full = run(RESUMABLE + ["--output-dir", str(d), "--stop-after", "10"])
    assert full.returncode == 0, full.stderr[-3000:]
    return torch.load(d / "checkpoint.pt", weights_only=True)


def assert_same_training_state(a, b):
    assert a["step"] == b["step"] == 10
    for key, v in a["model"].items():
        assert torch.equal(v, b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, ten_steps):
    first = run(RESUMABLE + ["--output-dir", str(tmp_path), "--stop-after", "3"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = run(RESUMABLE + ["--output-dir", str(tmp_path), "--resume", str(tmp_path / "checkpoint.pt"),
                              "--stop-after", "7"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "at step 3" in second.stdout
    assert_same_training_state(ten_steps, torch.load(tmp_path / "checkpoint.pt", weights_only=True))


def test_sigterm_saves_and_the_resumed_run_is_bit_identical(tmp_path, ten_steps):
    rc, out, err = _signalled_run(RESUMABLE + ["--output-dir", str(tmp_path / "part")], signal.SIGTERM, 2)
    assert rc == 128 + signal.SIGTERM and "Traceback" not in err, err
    part = tmp_path / "part" / "checkpoint.pt"
    k = torch.load(part, weights_only=True)["step"]
    assert 2 <= k < 10 and f"stopped by SIGTERM after step {k}" in err and f"at step {k}" in out
    assert os.listdir(tmp_path / "part") == ["checkpoint.pt"]
    resumed = run(RESUMABLE + ["--output-dir", str(tmp_path / "part"), "--resume", str(part),
                               "--stop-after", str(10 - k)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and f"at step {k}" in resumed.stdout
    assert_same_training_state(ten_steps, torch.load(part, weights_only=True))


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("tree")
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (d / c).mkdir()
        for i in range(4):
            arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(d / c / f"{i}.png")
    return d


def test_imagefolder_resume_without_workers_is_bit_identical(train, tmp_path, image_tree):
    """ImageFolder's random crops and flips draw from the global RNG in the main process (--workers 0): a run
    resumed mid-epoch must draw what the uninterrupted one drew (each loader's start drew its workers' base seed
    from that RNG, one draw more in the resumed run: 102 tensors differed, helper-53)."""
    argv = ["--data", str(image_tree), "--device", "cpu", "--arch", "resnet18", "--image-size", "32",
            "--batch-size", "2", "--workers", "0", "--steps", "40", "--log-every", "1"]
    part = tmp_path / "part" / "checkpoint.pt"
    assert train.main(argv + ["--output-dir", str(tmp_path / "full"), "--stop-after", "6"]) == 0
    assert train.main(argv + ["--output-dir", str(tmp_path / "part"), "--stop-after", "2"]) == 0
    assert train.main(argv + ["--output-dir", str(tmp_path / "part"), "--resume", str(part), "--stop-after", "4"]) == 0
    a, b = (torch.load(p, weights_only=True) for p in (tmp_path / "full" / "checkpoint.pt", part))
    assert a["step"] == b["step"] == 6  # 4 steps an epoch: resumed mid-epoch, ended in the next
    for key, v in a["model"].items():
        assert torch.equal(v, b["model"][key]), key


def test_sigterm_to_the_process_group_with_workers_saves(tmp_path, image_tree):
    """A scheduler's preemption signals the whole process group, data-loader workers included: they leave it to
    the main process, which finishes the step and saves (a worker killed by it made the loader raise: a traceback,
    exit 1, nothing saved; helper-53)."""
    cmd = [sys.executable, TRAIN, "--data", str(image_tree), "--device", "cpu", "--arch", "resnet18",
           "--image-size", "32", "--batch-size", "2", "--workers", "2", "--steps", "1000", "--log-every", "1",
           "--output-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("step 2/"):
                os.killpg(proc.pid, signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    step = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"]
    assert step >= 2 and f"stopped by SIGTERM after step {step}" in err


def test_sigint_saves_and_exits_cleanly(tmp_path):
    cmd = [sys.executable, TRAIN] + SMALL + ["--steps", "1000", "--output-dir", str(tmp_path)]
    rc, out, err = _signalled_run(cmd, signal.SIGINT, 1)
    assert rc == 128 + signal.SIGINT and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    step = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"]
    assert step >= 1 and f"stopped by SIGINT after step {step}" in err
    assert os.listdir(tmp_path) == ["checkpoint.pt"]

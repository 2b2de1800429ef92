"""The command line (`python -m resnet_ext predict|bench|report`) on the CPU: every bad input is one line naming what
was wrong with exit code 2, before any work; every image mode PIL opens is converted by the documented rule; one
unreadable image does not lose the others; bench interleaves its contenders, times resnet_ext frozen and default,
and compiles its torch.compile peer with inductor freezing; report reads both benchmark formats and nothing else.
Small models (resnet18, few classes) and tiny inputs keep it fast; a subprocess only where the real exit code and
stderr matter."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import resnet_ext
from conftest import tv_model
from resnet_ext import bench, predict
from resnet_ext.__main__ import main as cli
from resnet_ext.weights import WeightsFileNotFound, check_state_dict, load_state, resolve_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "2026-11-28-h100-run3-bench.json")


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def exits_2(argv):
    """Runs the CLI in-process; returns its exit code whether it returned or raised SystemExit (argparse)."""
    try:
        return cli(argv)
    except SystemExit as e:
        return e.code


# ---------------------------------------------------------------------------------------------------------------
# weights.py
# ---------------------------------------------------------------------------------------------------------------

def test_resolve_weights_messages(tmp_path):
    enum = torchvision.models.ResNet50_Weights
    assert resolve_weights("resnet50", "DEFAULT") is enum.DEFAULT
    assert resolve_weights("resnet50", "IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert resolve_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V2") is enum.IMAGENET1K_V2
    assert resolve_weights("resnet50", None) is None
    with pytest.raises(WeightsFileNotFound, match="missing.pt: no such file"):
        resolve_weights("resnet50", "missing.pt")
    with pytest.raises(ValueError, match="no such file"):  # still a ValueError for old callers
        resolve_weights("resnet50", str(tmp_path / "sub" / "w"))
    with pytest.raises(ValueError, match="is a directory"):
        resolve_weights("resnet50", str(tmp_path))
    with pytest.raises(ValueError) as e:
        resolve_weights("resnet50", "NOPE")
    msg = str(e.value)
    assert "unknown weights 'NOPE' for resnet50" in msg and msg.count("DEFAULT") == 1 and "IMAGENET1K_V2" in msg
    with pytest.raises(ValueError, match="another architecture"):
        resolve_weights("resnet50", torchvision.models.ResNet18_Weights.IMAGENET1K_V1)


def test_load_state_unwraps_and_reports_bad_files(tmp_path):
    sd = tv_model("resnet18", num_classes=3).state_dict()
    ddp = {"module." + k: v for k, v in sd.items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"model": ddp, "step": 3}, path)
    state = load_state(str(path))
    assert list(state) == list(sd) and all(torch.equal(state[k], sd[k]) for k in sd)
    whole = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="trunc.pt: not a readable checkpoint"):
        load_state(str(tmp_path / "trunc.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_state(str(tmp_path / "list.pt"))
    with pytest.raises(RuntimeError) as e:
        check_state_dict(tv_model("resnet34", num_classes=3), sd, "x.pt", "resnet34")
    assert str(e.value).count("\n") == 0 and "x.pt: does not fit resnet34: " in str(e.value)
    assert "missing keys (e.g. 'layer1.2." in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A resnet18 checkpoint with 5 classes and a few small images."""
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = tv_model("resnet18", seed=0, num_classes=5).eval()  # module-scoped: no per-test count here
    ckpt = d / "rn18.pt"
    torch.save(model.state_dict(), ckpt)
    g = np.random.RandomState(0)
    rgb = d / "rgb.png"
    Image.fromarray(g.randint(0, 256, (40, 52, 3), dtype=np.uint8)).save(rgb)
    return d, str(ckpt), str(rgb), model


def test_to_rgb_sixteen_bit_and_float_by_the_true_range():
    g = np.random.RandomState(1)
    a16 = g.randint(0, 65536, (9, 7)).astype(np.uint16)
    want = np.repeat((a16 >> 8).astype(np.uint8)[..., None], 3, axis=2)
    for im in (Image.fromarray(a16), Image.fromarray(a16.astype(np.int32))):  # I;16 and I
        out = predict.to_rgb(im)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), want), im.mode
    big = g.randint(0, 65536, (4, 4)).astype(np.uint16).astype(">u2")  # big-endian 16-bit, as TIFFs open
    out = predict.to_rgb(Image.frombytes("I;16B", (4, 4), big.tobytes()))
    assert np.array_equal(np.asarray(out)[..., 0], (big.astype(np.uint16) >> 8).astype(np.uint8))
    with pytest.raises(predict.ImageError, match="outside 0..65535"):
        predict.to_rgb(Image.fromarray(np.full((2, 2), 70000, np.int32)))
    f = g.rand(5, 6).astype(np.float32)
    assert np.array_equal(np.asarray(predict.to_rgb(Image.fromarray(f)))[..., 1],
                          np.rint(f.astype(np.float64) * 255).astype(np.uint8))
    with pytest.raises(predict.ImageError, match=r"outside \[0, 1\]"):
        predict.to_rgb(Image.fromarray(f * 255))
    f[1, 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's All-NaN warnings were printed as blocks before the message
        with pytest.raises(predict.ImageError, match=r"1 non-finite values"):
            predict.to_rgb(Image.fromarray(f))


def test_predict_a_warning_while_reading_an_image_is_one_line_naming_it(small, capsys, monkeypatch):
    _, ckpt, rgb, _ = small
    real_open = Image.open

    def warn_open(path):  # as PIL's DecompressionBombWarning for a very large image
        warnings.warn("Image size (144000000 pixels) exceeds limit", Image.DecompressionBombWarning)
        return real_open(path)

    monkeypatch.setattr(Image, "open", warn_open)
    assert cli(["predict", rgb, "--arch", "resnet18", "--weights", ckpt, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err == f"python -m resnet_ext predict: warning: {rgb}: Image size (144000000 pixels) exceeds limit\n"


def test_to_rgb_transparency_palette_cmyk_exif(tmp_path):
    rgba = Image.fromarray(np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], np.uint8), "RGBA")
    assert np.asarray(predict.to_rgb(rgba)).tolist() == [[[255, 255, 255], [0, 0, 255], [127, 127, 127]]]
    la = Image.fromarray(np.array([[[0, 0], [10, 255]]], np.uint8), "LA")
    assert np.asarray(predict.to_rgb(la)).tolist() == [[[255, 255, 255], [10, 10, 10]]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50])
    pal.putpixel((1, 0), 1)
    assert np.asarray(predict.to_rgb(pal)).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    pal.info["transparency"] = 0
    assert np.asarray(predict.to_rgb(pal)).tolist() == [[[255, 255, 255], [200, 100, 50]]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert np.asarray(predict.to_rgb(cmyk)).tolist() == [[[255, 0, 0]]]
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): the classified image is the upright one.
    a = np.random.RandomState(2).randint(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rot.png", exif=exif)
    with Image.open(tmp_path / "rot.png") as im:
        out = np.asarray(predict.to_rgb(im))
    assert out.shape == (10, 6, 3) and np.array_equal(out, np.rot90(a, k=-1))


def test_predict_sixteen_bit_png_classifies_like_its_eight_bit_version(small, capsys):
    d, ckpt, _, _ = small
    a16 = np.random.RandomState(3).randint(0, 65536, (40, 52)).astype(np.uint16)
    Image.fromarray(a16).save(d / "g16.png")
    Image.fromarray((a16 >> 8).astype(np.uint8)).convert("RGB").save(d / "g8.png")
    assert cli(["predict", str(d / "g16.png"), str(d / "g8.png"), "--arch", "resnet18", "--weights", ckpt,
                "--json", "--topk", "5", "--device", "cpu"]) == 0
    r16, r8 = json.loads(capsys.readouterr().out)
    assert [t["index"] for t in r16["top"]] == [t["index"] for t in r8["top"]]
    assert max(abs(a["prob"] - b["prob"]) for a, b in zip(r16["top"], r8["top"])) < 1e-6
    # convert("RGB") alone (the old behaviour) clips a 16-bit image to white: a different input altogether.
    assert np.asarray(Image.open(d / "g16.png").convert("RGB")).min() > (a16 >> 8).min()


def test_predict_one_bad_image_does_not_lose_the_others(small, capsys):
    d, ckpt, rgb, model = small
    broken = d / "broken.png"
    broken.write_bytes(b"not an image at all")
    argv = ["predict", rgb, str(broken), rgb, "--arch", "resnet18", "--weights", ckpt, "--topk", "2",
            "--batch-size", "2", "--device", "cpu"]
    assert cli(argv) == 2
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == rgb and out.out.count(rgb) == 2 and len(out.out.splitlines()) == 6
    assert "broken.png: cannot read image (UnidentifiedImageError" in out.err
    assert cli(argv + ["--json"]) == 2
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [rgb, str(broken), rgb]
    assert "error" in results[1] and len(results[0]["top"]) == 2 and results[0] == results[2]
    # The probabilities are the torchvision model's on torchvision's transform.
    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    with torch.no_grad():
        probs = model(transform(Image.open(rgb).convert("RGB"))[None]).softmax(1)[0]
    assert abs(results[0]["top"][0]["prob"] - probs.max().item()) < 1e-4


@pytest.mark.parametrize("extra, needles", [
    (["--topk", "0"], ["argument --topk", ">= 1"]),
    (["--topk", "-1"], ["argument --topk", ">= 1"]),
    (["--topk", "6"], ["argument --topk", "1 to 5"]),
    (["--batch-size", "0"], ["argument --batch-size", ">= 1"]),
    (["--batch-size", "-1"], ["argument --batch-size", ">= 1"]),
    (["--device", "nonsense"], ["argument --device", "not a device"]),
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], ["argument --device", "not available"]),
])
def test_predict_bad_arguments_are_one_line(small, capsys, extra, needles):
    _, ckpt, rgb, _ = small
    assert exits_2(["predict", rgb, "--arch", "resnet18", "--weights", ckpt, *extra]) == 2
    one_line_error(capsys, *needles)


def test_predict_bad_paths_and_weights_are_one_line(small, capsys):
    d, ckpt, rgb, _ = small
    whole = open(ckpt, "rb").read()
    (d / "trunc.pt").write_bytes(whole[:1000])
    torch.save(tv_model("resnet34", num_classes=5).state_dict(), d / "rn34.pt")
    cases = [
        ([str(d), "--weights", ckpt], f"{d}: is a directory, not an image"),
        ([str(d / "nope.jpg"), "--weights", ckpt], "nope.jpg: no such file"),
        ([rgb, "--weights", str(d / "missing.pt")], "missing.pt: no such file"),
        ([rgb, "--weights", str(d)], "is a directory, not a checkpoint file"),
        ([rgb, "--weights", str(d / "trunc.pt")], "trunc.pt: not a readable checkpoint"),
        ([rgb, "--weights", str(d / "rn34.pt")], "does not fit resnet18"),
        ([rgb, "--weights", "IMAGENET1K_V9"], "unknown weights 'IMAGENET1K_V9' for resnet18; known: "
                                              "IMAGENET1K_V1, DEFAULT"),
    ]
    for argv, message in cases:
        assert cli(["predict", *argv, "--arch", "resnet18", "--device", "cpu"]) == 2, message
        err = one_line_error(capsys, message)
        if "unknown" in message:
            assert err.count("DEFAULT") == 1


# ---------------------------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------------------------

def test_bench_interleaves_rounds():
    calls = []
    fns = {name: (lambda x, name=name: calls.append(name)) for name in "ABC"}
    times, warm = resnet_ext.cli.time_interleaved(fns, None, 3, {"A": 1, "B": 0, "C": 2},
                                                  resnet_ext.cli.Progress(0, enabled=False), "eval")
    # Each round starts one contender later, so that none always follows the same one.
    assert calls == ["A", "C", "C"] + ["A", "B", "C", "B", "C", "A", "C", "A", "B"]
    assert {k: len(v) for k, v in times.items()} == {"A": 3, "B": 3, "C": 3} and set(warm) == {"A", "B", "C"}
    calls.clear()
    resnet_ext.cli.time_interleaved(fns, None, 2, {"A": 0, "B": 0, "C": 0}, rotate=False)
    assert calls == ["A", "B", "C"] * 2
    calls.clear()  # settle: each timed call right after an untimed one of the same contender
    times, _ = resnet_ext.cli.time_interleaved(fns, None, 2, {"A": 0, "B": 0, "C": 0}, settle=1)
    assert calls == ["A", "A", "B", "B", "C", "C", "B", "B", "C", "C", "A", "A"]
    assert {k: len(v) for k, v in times.items()} == {"A": 2, "B": 2, "C": 2}
    s = resnet_ext.cli.ratio([2.0, 4.0, 3.0], [1.0, 1.0, 3.0])
    assert s == {"median": 2.0, "min": 1.0, "max": 4.0}


def test_bench_runs_frozen_and_default_rows_and_report_reads_its_json(tmp_path, capsys, monkeypatch):
    frozen = []
    real_freeze = resnet_ext.freeze
    monkeypatch.setattr(resnet_ext, "freeze", lambda m: frozen.append(m) or real_freeze(m))
    out = tmp_path / "b.json"
    assert cli(["bench", "--arch", "resnet18", "--batch-size", "1", "--image-size", "32", "--iters", "2",
                "--warmup", "0", "--device", "cpu", "--quiet", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for row in ("torchvision ", "resnet_ext ", "resnet_ext frozen ", "min-max ms",
                "resnet_ext frozen / torchvision: ", "resnet_ext / torchvision: ", "per round"):
        assert row in text, text
    assert len(frozen) == 1 and resnet_ext.is_frozen(frozen[0])
    r = json.loads(out.read_text())
    assert r["order"] == "interleaved" and list(r["eval"]) == ["torchvision", "resnet_ext", "resnet_ext frozen"]
    for rec in r["eval"].values():
        assert len(rec["times_s"]) == 2 and rec["min_s"] <= rec["median_s"] <= rec["max_s"]
        assert rec["max_abs_diff_vs_torchvision"] < 1e-3
    s = r["eval_speedups"]["resnet_ext frozen"]
    assert s["min"] <= s["median"] <= s["max"] and r["eval_speedup"] == s["median"]
    assert cli(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep.md").read_text()
    assert "| resnet_ext frozen |" in md and "| torchvision |" in md and "model_eval" in md


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bf16 on this CPU")
def test_bench_frozen_bf16_row(capsys):
    assert cli(["bench", "--arch", "resnet18", "--batch-size", "1", "--image-size", "32", "--iters", "1",
                "--warmup", "0", "--device", "cpu", "--quiet", "--frozen-bf16"]) == 0
    text = capsys.readouterr().out
    assert "resnet_ext frozen bf16 " in text and "resnet_ext frozen bf16 / torchvision: " in text, text


def test_bench_runtime_peers(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "b.json"
    assert cli(["bench", "--arch", "resnet18", "--batch-size", "1", "--image-size", "32", "--iters", "1",
                "--warmup", "0", "--device", "cpu", "--quiet", "--runtimes", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime " in text and "resnet_ext frozen / onnxruntime: " in text, text
    r = json.loads(out.read_text())
    assert r["runtimes"]["onnxruntime"] and r["eval"]["onnxruntime"]["rel_diff_vs_torchvision"] < 1e-4


def test_bench_compile_peer_uses_inductor_freezing(monkeypatch):
    seen = []

    def fake_compile(model, mode=None):
        return lambda x: seen.append((torch._inductor.config.freezing, mode)) or model(x)

    monkeypatch.setattr(torch, "compile", fake_compile)
    run = bench.compile_frozen(torch.nn.Identity(), "default")
    assert torch.equal(run(torch.ones(2)), torch.ones(2))
    assert seen == [(True, "default")] and torch._inductor.config.freezing is False


@pytest.mark.parametrize("extra, needles", [
    (["--iters", "0"], ["argument --iters", ">= 1"]),
    (["--batch-size", "0"], ["argument --batch-size", ">= 1"]),
    (["--batch-size", "-1"], ["argument --batch-size", ">= 1"]),
    (["--image-size", "0"], ["argument --image-size", ">= 32"]),
    (["--warmup", "-1"], ["argument --warmup", ">= 0"]),
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], ["argument --device", "not available"]),
    (["--device", "nonsense"], ["argument --device"]),
    (["--json", "/proc/no/such/dir/b.json"], ["--json", "cannot write"]),
    (["--json", "."], ["--json", "is a directory"]),
    (["--train", "--batch-size", "1"], ["--train needs --batch-size >= 2"]),
    (["--frozen-bf16", "--dtype", "bf16"], ["--frozen-bf16", "fp32 models on the CPU"]),
    (["--runtimes", "--dtype", "bf16"], ["--runtimes", "fp32 models on the CPU"]),
    (["--compile", "--compile-mode", "default,fast"], ["--compile-mode", "'fast' is not a torch.compile mode"]),
    (["--compile-mode", "reduce-overhead"], ["--compile-mode", "add --compile"]),  # was silently no contender
    (["--device", "cpu", "--autotune"], ["--autotune", "needs a CUDA device"]),  # was accepted, nothing to tune
    # each was a traceback (an allocation failing, an overflow in randn) after the models were built
    (["--device", "cpu", "--batch-size", str(10 ** 20)], ["--batch-size 100000000000000000000", "alone is"]),
    (["--device", "cpu", "--batch-size", "1", "--image-size", "10000000"], ["--image-size 10000000", "GiB"]),
    (["--json", ""], ["--json: empty path"]),  # was a run that wrote no JSON
    (["--train", "--fused-train", "--arch", "resnet18"], ["--fused-train", "resnet18"]),  # was a default-model row
] + ([] if torch.cuda.is_available() else [(["--cuda-graphs"], ["--cuda-graphs needs a CUDA device"])]))
def test_bench_bad_arguments_fail_before_any_work(capsys, monkeypatch, extra, needles):
    monkeypatch.setattr(bench, "run", lambda args: pytest.fail("the benchmark ran"))
    assert exits_2(["bench", *extra]) == 2
    one_line_error(capsys, *needles)


def test_a_message_is_cut_at_a_sentence_only_where_it_is_long():
    from resnet_ext.cli import first_sentence

    short = "Found no valid file for the classes a. Supported extensions are: .jpg, .png"
    assert first_sentence(RuntimeError(short + "\nsecond line")) == short  # was cut after "classes a"
    long = "PytorchStreamReader failed reading zip archive: failed finding central directory. " + "More. " * 40
    cut = first_sentence(long, 100)  # whole sentences within the limit
    assert cut.startswith("PytorchStreamReader failed reading zip archive: failed finding central directory.")
    assert cut.endswith("More.") and len(cut) <= 100 and len(cut) > 100 - len("More. ")
    assert first_sentence("x" * 300, 100) == "x" * 97 + "..."


def test_bench_out_of_memory_is_one_line(capsys, monkeypatch):
    def run(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 57600000000 bytes.\nmore")

    monkeypatch.setattr(bench, "run", run)
    assert cli(["bench", "--device", "cpu", "--batch-size", "1", "--image-size", "3000", "--quiet"]) == 1
    one_line_error(capsys, "out of memory at --batch-size 1 --image-size 3000", "can't allocate memory")


def test_bench_runtime_peers_leave_no_file(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the export goes
    tv = tv_model("resnet18", num_classes=3).eval()
    peers, _, _ = bench.runtime_peers(tv, torch.randn(1, 3, 32, 32), False)
    assert "onnxruntime" in peers and peers["onnxruntime"](torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert os.listdir(tmp_path) == []  # was a model.onnx left per run (46.7 MB for resnet18: helper-40)


def test_an_option_the_command_lacks_points_at_its_own_help(capsys):
    assert exits_2(["report", RESULTS, "--bogus"]) == 2
    one_line_error(capsys, "python -m resnet_ext report: error: unrecognized arguments: --bogus",
                   "see python -m resnet_ext report --help")


def test_output_closed_early_is_quiet(tmp_path):
    """`python -m resnet_ext report ... | head -1`: the reader closes the pipe; no BrokenPipeError traceback."""
    import resnet_ext as pkg

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(pkg.__file__)),
                                                        os.environ.get("PYTHONPATH", "")])}
    read, write = os.pipe()
    os.close(read)  # closed before the command writes: its first write fails
    try:
        out = subprocess.run([sys.executable, "-m", "resnet_ext", "report", RESULTS, "--out", str(tmp_path / "r")],
                             stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    finally:
        os.close(write)
    assert out.returncode == 141 and out.stderr == "", out.stderr


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------

def test_report_reads_pytest_benchmark_json(tmp_path, capsys):
    assert cli(["report", RESULTS, "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r.md").read_text()
    assert "### conv_bn_act" in md and "### model_eval" in md and "Geomean speedup" in md


def test_report_rejects_everything_else(tmp_path, capsys):
    files = {"list.json": "[1, 2]", "other.json": '{"a": 1}', "bad.json": "{bad", "empty.json": '{"benchmarks": []}',
             "nores.json": '{"benchmarks": [{"name": "x", "stats": {"median": 1}}]}'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cases = [("list.json", "holds a JSON list, not a benchmark file"),
             ("other.json", "not a benchmark file"),
             ("bad.json", "not valid JSON"),
             ("empty.json", "no resnet_ext benchmark records"),
             ("nores.json", "no resnet_ext benchmark records"),
             ("missing.json", "missing.json: no such file"),
             (".", "is a directory")]
    for name, message in cases:
        assert cli(["report", str(tmp_path / name), "--out", str(tmp_path / "x")]) == 2, name
        one_line_error(capsys, message)
        assert not (tmp_path / "x.md").exists()
    assert cli(["report", RESULTS, "--out", str(tmp_path / "list.json" / "x")]) == 2
    one_line_error(capsys, "--out", "is not a directory")
    # bench files whose tables are malformed: each was a KeyError/AttributeError/ZeroDivisionError traceback
    bench_like = {"kind.json": {"kind": "resnet_ext.bench"},
                  "norow.json": {"kind": "resnet_ext.bench", "eval": {"torchvision": {}}},
                  "evlist.json": {"kind": "resnet_ext.bench", "eval": []},
                  "zero.json": {"arch": "x", "eval": {"a": {"median_s": 0}}}}
    for name, data in bench_like.items():
        (tmp_path / name).write_text(json.dumps(data))
        assert cli(["report", str(tmp_path / name), "--out", str(tmp_path / "x")]) == 2, name
        one_line_error(capsys, "a bench file without a valid 'eval' table")
    (tmp_path / "badspread.json").write_text(json.dumps(
        {"kind": "resnet_ext.bench", "eval": {"torchvision": {"median_s": 1.0, "min_s": "x", "max_s": 2.0}}}))
    assert cli(["report", str(tmp_path / "badspread.json"), "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "a bench file whose tables are malformed")
    assert not (tmp_path / "x.md").exists()
    assert cli(["report", RESULTS, "--out", ""]) == 2
    one_line_error(capsys, "--out: empty path")


def test_report_out_as_a_directory_or_a_name_with_dots(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    # was a ValueError traceback ("."), "out.md" for "out/", "rep.md" for "rep.v2"
    for out, written in ((".", "benchmark-report.md"), ("d", "d/benchmark-report.md"),
                         ("new/", "new/benchmark-report.md"), ("rep.v2", "rep.v2.md"), ("r.md", "r.md")):
        assert cli(["report", RESULTS, "--out", out]) == 0, out
        assert (tmp_path / written).is_file(), out
        assert f"wrote {written}" in capsys.readouterr().out


def test_real_entry_point_exit_code_and_one_line():
    import resnet_ext as pkg

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(pkg.__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "resnet_ext", "bench", "--iters", "0"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert "argument --iters: expected an integer >= 1, got 0" in out.stderr

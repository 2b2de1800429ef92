"""The user's jobs end to end on the CPU: predict on real image files, converting models both ways, training with
torchrun (two gloo processes), exact resume, torch.export and torch.compile."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

import resnet_ext
from conftest import randomize_bn, rel_err
from resnet_ext.__main__ import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "examples", "train.py")


def run(cmd, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


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
    tv = randomize_bn(torchvision.models.resnet50()).eval()
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
    torch.save(torchvision.models.resnet18().state_dict(), rn18)
    cases = [
        ([str(d / "missing.jpg"), "--weights", ckpt], "missing.jpg: no such file"),
        ([str(garbage), "--weights", ckpt], "broken.png: cannot read image"),
        ([paths[0], "--weights", str(rn18)], "does not fit resnet50"),
        ([paths[0], "--weights", "IMAGENET1K_V9"], "unknown weights 'IMAGENET1K_V9' for resnet50"),
        ([paths[0], "--weights", str(d / "nope.pt")], "nope.pt: no such checkpoint file"),
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
    tv = randomize_bn(torchvision.models.resnet101(replace_stride_with_dilation=[False, True, True])).eval()
    ours = resnet_ext.from_torchvision(tv)
    assert isinstance(ours, resnet_ext.ResNet) and not ours.training
    for (k, a), (k2, b) in zip(ours.state_dict(keep_vars=True).items(), tv.state_dict(keep_vars=True).items()):
        assert k == k2 and a is b  # the same objects: nothing copied
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ours(x), tv(x)) < 1e-4
    back = ours.to_torchvision()
    assert type(back) is torchvision.models.ResNet and back.fc.weight is tv.fc.weight
    rn18 = resnet_ext.from_torchvision(torchvision.models.resnet18())
    assert isinstance(rn18.layer1[0], resnet_ext.BasicBlock)


def test_torchrun_two_gloo_processes_end_with_identical_weights(tmp_path):
    out = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN,
               "--fake-data", "--steps", "3", "--device", "cpu", "--image-size", "64", "--batch-size", "2",
               "--fake-size", "16", "--sync-bn", "--output-dir", str(tmp_path)], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    digests = dict(line.split("(rank ")[1].split("): ") for line in out.stdout.splitlines()
                   if line.startswith("final weights sha256"))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    common = [sys.executable, TRAIN, "--fake-data", "--steps", "6", "--device", "cpu", "--image-size", "48",
              "--batch-size", "4", "--fake-size", "16", "--warmup-epochs", "0.5", "--log-every", "1"]
    full = run(common + ["--output-dir", str(tmp_path / "full")])
    first = run(common + ["--output-dir", str(tmp_path / "part"), "--stop-after", "3"])
    second = run(common + ["--output-dir", str(tmp_path / "part"), "--resume", str(tmp_path / "part" / "checkpoint.pt")])
    for out in (full, first, second):
        assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in second.stdout and "at step 3" in second.stdout
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_export_of_an_eval_model_runs_and_matches_eager():
    torch.manual_seed(0)
    model = randomize_bn(resnet_ext.resnet50(num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    ep = torch.export.export(model, (x,))
    assert any("conv_bn_act" in str(n.target) for n in ep.graph.nodes)
    x2 = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ep.module()(x2), model(x2)) < 1e-5
        assert rel_err(ep.module()(x), ref) < 1e-5


def test_compile_fullgraph_train_step_matches_eager():
    torch.manual_seed(0)
    eager = resnet_ext.ResNet(resnet_ext.Bottleneck, [1, 1, 1, 1], num_classes=10).train()
    compiled = resnet_ext.ResNet(resnet_ext.Bottleneck, [1, 1, 1, 1], num_classes=10).train()
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(compiled, fullgraph=True)
    x = torch.randn(4, 3, 32, 32)
    out_c, out_e = step(x), eager(x)
    out_c.square().mean().backward()
    out_e.square().mean().backward()
    assert rel_err(out_c, out_e) < 1e-3
    assert rel_err(compiled.conv1.weight.grad, eager.conv1.weight.grad) < 1e-2
    assert rel_err(compiled.layer1[0].bn1.running_var, eager.layer1[0].bn1.running_var) < 1e-5
    assert int(compiled.layer1[0].bn1.num_batches_tracked) == 1

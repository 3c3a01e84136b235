"""Adding a domain to a published version leaves every old domain bit-identical; removing one
keeps the others' outputs; the server hot-reloads the result like any version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_store import (
    ArtifactError,
    PrecisionRecord,
    derive_version,
    load_version,
    open_version,
    publish_version,
)
from server import create_app
from tests.server.conftest import TOKEN, running, settings_for
from tests.training.conftest import TINY_DOMAINS, tiny_config
from training.domains import AddDomainSettings, add_domain, remove_domain
from training.publish import EQUIVALENCE_TOLERANCE, publish_result
from training.trainer import train

NEW = {
    "source": "synthetic",
    "name": "stripes",
    "classes": 3,
    "train_size": 96,
    "test_size": 48,
    "seed": 7,
}
QUICK = AddDomainSettings(epochs=2, recovery_epochs=1, batch_size=16, bn_batches=4)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained, pruned and published version (v1) of two domains."""
    root = tmp_path_factory.mktemp("domains")
    config = tiny_config(domains=[dict(d) for d in TINY_DOMAINS[:2]], name="tiny")
    publish_result(config, train(config, root / "run", progress=False), root / "store")
    return root / "store"


def _copy(store: Path, tmp_path: Path) -> Path:
    subprocess.run(["cp", "-r", str(store), str(tmp_path / "store")], check=True)
    return tmp_path / "store"


def test_added_domain_leaves_every_old_tensor_and_output_bit_identical(
    published: Path, tmp_path: Path
) -> None:
    store = _copy(published, tmp_path)
    manifest, publication = add_domain(store, "tiny", dict(NEW), budget=0.5, settings=QUICK)
    assert (
        manifest.version == "v2" == publication.current
        and manifest.spec.domain_names[-1] == "stripes"
    )
    old_manifest, old = load_version(store, "tiny", "v1")
    _, new = load_version(store, "tiny", "v2")  # verified, CURRENT
    assert new.spec.mid_channels == old.spec.mid_channels  # the stored convs did not grow
    new_state = new.state_dict()
    for key, value in old.state_dict().items():
        assert torch.equal(new_state[key][: len(value)], value), key
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        for d in range(len(old.spec.domains)):
            assert torch.equal(old(x, d), new(x, d))
    for name, metrics in old_manifest.domains.items():
        assert manifest.domains[name] == metrics
    added = manifest.domains["stripes"]
    assert added.cost_fraction <= 0.5 and added.accuracy is not None
    record = manifest.training["add_domain"]
    assert record["from"] == "v1" and record["old_domains_bit_identical"] is True
    assert any(k.endswith("stripes.onnx") for k in manifest.files)  # graphs at publish


def test_a_new_version_drops_what_was_measured_on_the_old_graphs(
    published: Path, tmp_path: Path
) -> None:
    """int8 and bf16 accuracy belong to the graphs they were measured on; add- and
    remove-domain publish fresh graphs, so those records must not come along."""
    store = _copy(published, tmp_path)
    names = open_version(store, "tiny").manifest.spec.domain_names
    record = PrecisionRecord("r", "c", {}, dict.fromkeys(names, 0.5), dict.fromkeys(names, 0.5))
    derive_version(store, "tiny", "v1", {}, {"bf16": record, "int8": record})  # v2
    removed, _ = remove_domain(store, "tiny", "shapes", from_version="v2")
    added, _ = add_domain(store, "tiny", dict(NEW), budget=0.5, settings=QUICK, from_version="v2")
    for new in (removed, added):
        assert not new.precisions, new.version
        assert "config" in new.training  # the rest of the record is carried
        assert set(new.sources) == set(new.spec.domain_names)  # each domain's data, by name


def test_an_existing_name_is_refused_before_training(published: Path, tmp_path: Path) -> None:
    store = _copy(published, tmp_path)
    with pytest.raises(ValueError, match="already in tiny v1"):
        add_domain(store, "tiny", dict(TINY_DOMAINS[0]), settings=QUICK)


def test_removed_domain_leaves_the_others_outputs(published: Path, tmp_path: Path) -> None:
    store = _copy(published, tmp_path)
    manifest, _ = remove_domain(store, "tiny", "shapes")
    assert manifest.spec.domain_names == ("colours",)
    _, old = load_version(store, "tiny", "v1")
    _, new = load_version(store, "tiny", "v2")
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert (old(x, 1) - new(x, 0)).abs().max() <= EQUIVALENCE_TOLERANCE
    assert sum(new.spec.mid_channels) <= sum(old.spec.mid_channels)
    with pytest.raises(ValueError, match="no domain 'shapes'"):
        remove_domain(store, "tiny", "shapes")
    # the unpruned convs travel with it (listed and hashed), so a later --grow needs no path
    backbone = (store / "tiny" / "v1" / "backbone.safetensors").read_bytes()
    assert (store / "tiny" / "v2" / "backbone.safetensors").read_bytes() == backbone
    assert "backbone.safetensors" in load_version(store, "tiny", "v2")[0].files
    add_domain(store, "tiny", dict(NEW), budget=0.9, settings=QUICK, grow=True)
    assert (store / "tiny" / "v3" / "backbone.safetensors").read_bytes() == backbone


@pytest.mark.slow
def test_cli_add_domain_then_the_server_reloads_it(published: Path, tmp_path: Path) -> None:
    store = _copy(published, tmp_path)
    import anyio

    async def serve_and_reload() -> None:
        app = create_app(settings_for(store, model="tiny"))
        async with running(app) as client:
            before = (await client.get("/domains")).json()
            assert [d["name"] for d in before["domains"]] == ["shapes", "colours"]
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "training",
                    "add-domain",
                    "--store",
                    str(store),
                    "--name",
                    "tiny",
                    "--domain",
                    "stripes",
                    "--source",
                    "synthetic",
                    "--epochs",
                    "1",
                    "--recovery-epochs",
                    "0",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert run.returncode == 0, run.stderr
            assert "every old domain bit-identical to v1" in run.stdout
            headers = {"Authorization": f"Bearer {TOKEN}"}
            assert (await client.post("/admin/reload", headers=headers)).status_code == 200
            after = (await client.get("/domains")).json()
            assert after["version"] == "v2"
            assert [d["name"] for d in after["domains"]] == ["shapes", "colours", "stripes"]
            metrics = (await client.get("/metrics")).text
            assert 'domain="stripes"' in metrics

    anyio.run(serve_and_reload)


def test_grow_lets_the_new_domain_use_pruned_filters(published: Path, tmp_path: Path) -> None:
    store = _copy(published, tmp_path)
    assert (store / "tiny" / "v1" / "backbone.safetensors").is_file()  # kept at publish
    manifest, _ = add_domain(store, "tiny", dict(NEW), budget=0.9, settings=QUICK, grow=True)
    _, old = load_version(store, "tiny", "v1")
    _, new = load_version(store, "tiny", "v2")
    growth = manifest.training["add_domain"]["grow"]
    assert growth["filters_added"] == [
        n - o for n, o in zip(new.spec.mid_channels, old.spec.mid_channels, strict=True)
    ]
    assert all(a >= 0 for a in growth["filters_added"])
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        for d in range(len(old.spec.domains)):
            assert (old(x, d) - new(x, d)).abs().max() <= EQUIVALENCE_TOLERANCE
    old_manifest, _ = load_version(store, "tiny", "v1")
    for name in old.spec.domain_names:  # the old domains' MACs and parameters are unchanged
        assert manifest.domains[name] == old_manifest.domains[name]


def test_grow_without_a_backbone_says_what_to_pass(published: Path, tmp_path: Path) -> None:
    manifest, model = load_version(published, "tiny", "v1")
    manifest.files = {}
    publish_version(tmp_path, model, manifest)  # as versions were published before backbones
    with pytest.raises(ValueError, match="--grow needs the unpruned backbone"):
        add_domain(tmp_path, "tiny", dict(NEW), settings=QUICK, grow=True)


@pytest.mark.slow
def test_every_command_finds_each_domain_by_name_after_add_and_remove(
    published: Path, tmp_path: Path
) -> None:
    """remove-domain, evaluate, quantize, add-domain, quantize, in that order: each command
    finds each domain's data and preprocessing by its name (the first domain removed shifts
    every position), the new domain gets int8 graphs and its figure, and the server serves
    every domain in int8 (before the fix: evaluate and quantize paired the original config's
    domains with the version's by position and failed, KeyError)."""
    from server.runner import setup
    from training.cli import main
    from training.quantize import quantize_version

    store = _copy(published, tmp_path)
    remove_domain(store, "tiny", "shapes")  # v2: colours only
    assert main(["evaluate", "--store", str(store), "--name", "tiny", "--json"]) == 0
    _, quantized = quantize_version(store, "tiny", calibration_images=16)  # v3
    assert set(quantized.precisions["int8"].accuracy) == {"colours"}
    add_domain(store, "tiny", dict(NEW), budget=0.5, settings=QUICK)  # v4: no int8 yet
    with pytest.raises(ArtifactError, match="training quantize --version v4"):
        setup(store, "tiny", precision="int8")
    publication, manifest = quantize_version(store, "tiny", calibration_images=16)  # v5
    assert publication.current == "v5" and manifest.spec.domain_names == ("colours", "stripes")
    assert set(manifest.precisions["int8"].accuracy) == {"colours", "stripes"}
    assert manifest.sources["stripes"]["source"] == "synthetic"
    served = setup(store, "tiny", precision="int8")
    assert served.runtime.precision == "int8" and list(served.index) == ["colours", "stripes"]


def _published_arch(arch: str, tmp_path: Path) -> Path:
    """A store holding v1 of a tiny trained `arch` network of two domains."""
    config = tiny_config(
        domains=[dict(d) for d in TINY_DOMAINS[:2]], name="tiny", arch=arch, width=0.125,
        resize=36, crop=32, pretrain_epochs=1, epochs=2, budget=0.7,
    )  # fmt: skip
    store = tmp_path / "store"
    publish_result(config, train(config, tmp_path / "run", progress=False), store)
    return store


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_add_grow_and_remove_domain_on_torchvision_layouts(arch: str, tmp_path: Path) -> None:
    """The torchvision-layout networks take add-domain (with --grow, so their stem, conv3 and
    downsample convs travel in the backbone file too) and remove-domain like ResNet-26: old
    domains unchanged, the removed domain's filters gone, graphs published."""
    store = _published_arch(arch, tmp_path)
    _, v1 = load_version(store, "tiny", "v1")
    added, _ = add_domain(store, "tiny", dict(NEW), budget=0.9, settings=QUICK, grow=True)
    _, v2 = load_version(store, "tiny", "v2")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for d in range(2):
            assert (v1(x, d) - v2(x, d)).abs().max() <= EQUIVALENCE_TOLERANCE
    assert "graphs/domains/stripes.onnx" in added.files
    removed, _ = remove_domain(store, "tiny", "shapes")
    _, v3 = load_version(store, "tiny", "v3")
    with torch.no_grad():
        assert (v2(x, 1) - v3(x, 0)).abs().max() <= EQUIVALENCE_TOLERANCE
    assert removed.spec.domain_names == ("colours", "stripes")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_int8_and_bf16_on_torchvision_layouts(arch: str, tmp_path: Path) -> None:
    """quantize and measure-bf16 on the new architectures: int8 graphs calibrated and measured
    for every domain, the bf16 record, and the server runs each precision."""
    import openvino

    from server.runner import setup
    from training.bf16 import measure_bf16
    from training.quantize import quantize_version

    store = _published_arch(arch, tmp_path)
    _, manifest = quantize_version(store, "tiny", calibration_images=16)
    assert set(manifest.precisions["int8"].accuracy) == {"shapes", "colours"}
    assert setup(store, "tiny", precision="int8").runtime.precision == "int8"
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return  # measure-bf16 refuses a CPU without native bf16, by design
    _, manifest = measure_bf16(store, "tiny")
    assert set(manifest.precisions["bf16"].accuracy) == {"shapes", "colours"}
    served = setup(store, "tiny", runtime="openvino", precision="bf16")
    assert served.runtime.precision == "bf16"

"""The text path without HTTP: TextType, the package's tokenizer, and minilm-l6 on both backends vs sentence-transformers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import inferd
from inferd.errors import InvalidInput, PackageError, PayloadTooLarge
from inferd.io import MAX_TEXT_CHARS, TextTokenizer, embed, load_tokenizer, text_input, texts_from, tokenize
from inferd.manifest import Manifest, Source
from inferd.package import MANIFEST_FILE, SAMPLES_FILE, ModelPackage
from inferd.runtime.selection import DYNAMIC_EXTENT, example_feeds
from inferd.types import TensorType, TextType
from inferd.zoo import is_prepared
from tests.conftest import ROOT

BACKENDS = ("onnxruntime", "openvino")
TRIPLE = ["a cat", "a kitten", "stock market"]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module", params=BACKENDS)
def model(request: pytest.FixtureRequest, text_package: Path) -> inferd.CompiledModel:
    return inferd.load(text_package, backend=request.param, precision="fp32")


def test_text_type_describes_its_token_tensors() -> None:
    spec = TextType(max_length=128, token_type_ids="token_type_ids")
    assert spec.name == "text" and spec.dtype == "string" and spec.shape == (-1,)
    assert [(t.name, t.shape, t.dtype) for t in spec.tensors] == [
        ("input_ids", (-1, -1), "int64"), ("attention_mask", (-1, -1), "int64"), ("token_type_ids", (-1, -1), "int64")]
    manifest = Manifest(name="t", source=Source(framework="test"), inputs=[spec],
                        outputs=[TensorType(name="embedding", shape=(-1, 8))])
    assert [s.name for s in manifest.graph_inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert Manifest.model_validate_json(manifest.model_dump_json()).inputs == [spec]


@pytest.mark.parametrize(("fields", "message"), [
    ({"shape": (-1, 4)}, "one dim"),
    ({"input_ids": "text"}, "distinct names"),
    ({"attention_mask": "input_ids"}, "distinct names"),
    ({"tokenizer": "../../etc/passwd"}, "inside the package"),
    ({"tokenizer": "/abs/tokenizer.json"}, "inside the package"),
    ({"max_length": 0}, "greater than 1"),
])
def test_text_type_refuses_inconsistent_specs(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TextType(**{"max_length": 16, **fields})


def test_manifest_refuses_a_graph_input_fed_twice() -> None:
    with pytest.raises(ValidationError, match="fed only once"):
        Manifest(name="t", source=Source(framework="test"),
                 inputs=[TextType(max_length=8), TensorType(name="input_ids", shape=(-1, -1), dtype="int64")],
                 outputs=[TensorType(name="y", shape=(-1, 2))])


def test_package_ships_tokenizer_and_records_fidelity(text_package: Path) -> None:
    package = ModelPackage.load(text_package)
    package.validate()
    assert set(package.manifest.files) == {"model.onnx", "tokenizer.json", "samples.npz"}  # real sentences, tokenized
    (spec,) = package.manifest.inputs
    assert isinstance(spec, TextType) and spec.max_length == 256
    graph_inputs = [i.name for i in package.onnx_model.graph.input]
    assert graph_inputs == ["input_ids", "attention_mask"]
    fidelity = package.manifest.fidelity
    assert fidelity is not None and fidelity.passed
    assert "sentence-transformers" in fidelity.reference
    assert fidelity.min_cosine_similarity is not None and fidelity.min_cosine_similarity >= 0.9999
    assert fidelity.max_abs_diff <= 1e-4 and fidelity.samples >= 10


def test_embeddings_are_unit_vectors_that_rank_meaning(model: inferd.CompiledModel) -> None:
    vectors = embed(model, TRIPLE)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cat, kitten, market = vectors
    assert cat @ kitten > cat @ market + 0.3, (cat @ kitten, cat @ market)
    assert embed(model, "a cat").shape == (384,)


@pytest.fixture(scope="module")
def sentence_transformers_reference(text_package: Path) -> tuple[list[str], np.ndarray]:
    """SentenceTransformer loaded offline from the PyPI package's directory, on real text."""
    from inferd.zoo import minilm_l6

    texts = minilm_l6.sample_texts()
    return texts, minilm_l6.reference_embeddings(texts)


def test_matches_sentence_transformers(
    model: inferd.CompiledModel, sentence_transformers_reference: tuple[list[str], np.ndarray]
) -> None:
    """An independent re-check of the recorded fidelity, on each backend, through inferd's own tokenization."""
    texts, reference = sentence_transformers_reference
    got = embed(model, texts, batch_size=4)
    assert cosine(got, reference).min() >= 0.9999
    assert np.abs(got - reference).max() <= 1e-4


def test_sequence_length_follows_the_batch(model: inferd.CompiledModel) -> None:
    short = tokenize(model, ["a cat"])
    assert short["input_ids"].tolist() == [[101, 1037, 4937, 102]]  # [CLS] a cat [SEP], lower-cased by the tokenizer
    mixed = tokenize(model, ["A Cat", "a much longer sentence about a cat"])
    assert mixed["input_ids"].shape == mixed["attention_mask"].shape == (2, 9)
    assert mixed["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert tokenize(model, ["word " * 1000])["input_ids"].shape == (1, 256)  # cut to max_length
    alone = model.predict(short)["embedding"]
    padded = model.predict(mixed)["embedding"]
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)  # padding changes nothing
    runs = model.predict_batch([short, tokenize(model, ["stock market crash"])])  # widths 4 and 5 cannot stack
    np.testing.assert_allclose(runs[0]["embedding"], alone, atol=1e-6)


def test_predict_with_text_says_how_to_tokenize(text_package: Path) -> None:
    model = inferd.load(text_package, backend="onnxruntime", precision="fp32")
    with pytest.raises(InvalidInput, match=r"inferd\.io\.tokenize"):
        model.predict({"text": ["a cat"]})


def test_warm_up_inputs_for_token_tensors() -> None:
    feeds = example_feeds({"input_ids": ((-1, -1), "int64"), "attention_mask": ((-1, -1), "int64")})
    assert feeds["input_ids"].shape == (1, DYNAMIC_EXTENT)
    assert (feeds["attention_mask"] == 1).all()  # attending everywhere, as a real text does


@pytest.mark.parametrize(("values", "error", "message"), [
    ([], InvalidInput, "at least one"),
    ("a cat", InvalidInput, "wrap it in a list"),
    (["ok", 3], InvalidInput, "text 1 is not a string but int"),
    (["ok", None], InvalidInput, "text 1 is not a string"),
    ([b"\xff\xfe"], InvalidInput, "not valid UTF-8"),
    (["x" * (MAX_TEXT_CHARS + 1)], PayloadTooLarge, "shorter"),
])
def test_texts_from_refuses_bad_batches(values: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        texts_from(values)  # type: ignore[arg-type]


def test_texts_from_decodes_utf8_bytes() -> None:
    assert texts_from(["plain", "café".encode()]) == ["plain", "café"]


def test_text_input_refuses_an_image_model(default_package: Path) -> None:
    with pytest.raises(InvalidInput, match="does not take a single text input"):
        text_input(ModelPackage.load(default_package).manifest)


def test_tokenizer_without_padding_is_refused(text_package: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(text_package / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(PackageError, match="no padding"):
        TextTokenizer(TextType(max_length=16), tmp_path / "tokenizer.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(PackageError, match="cannot read the tokenizer"):
        TextTokenizer(TextType(max_length=16), tmp_path / "broken.json")


def test_package_copies_and_guards_its_tokenizer(text_package: Path, tmp_path: Path) -> None:
    copy = ModelPackage.load(text_package).save(tmp_path / "copy")  # assets travel with a package saved elsewhere
    assert copy.path is not None and (copy.path / "tokenizer.json").is_file()
    ModelPackage.load(copy.path).validate()
    assert load_tokenizer(copy).tokenize(["a cat"])["input_ids"].tolist() == [[101, 1037, 4937, 102]]

    in_memory = ModelPackage(ModelPackage.load(text_package).manifest, model=copy.onnx_model)
    with pytest.raises(PackageError, match=r"tokenizer 'tokenizer\.json'"):
        in_memory.save(tmp_path / "no-tokenizer")

    tampered = tmp_path / "tampered"
    shutil.copytree(text_package, tampered)
    vocab = json.loads((tampered / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["cat"] = 1
    (tampered / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(PackageError, match=r"tokenizer\.json does not match the sha256"):
        ModelPackage.load(tampered)

    missing = tmp_path / "missing"
    shutil.copytree(text_package, missing)
    manifest = json.loads((missing / MANIFEST_FILE).read_text())
    del manifest["files"]["tokenizer.json"]
    (missing / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"lists no tokenizer\.json"):
        ModelPackage.load(missing).validate()


def test_readme_text_tour_runs(text_package: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    tour = next(block for block in blocks if "inferd.io.embed(" in block)
    result = subprocess.run([sys.executable, "-c", tour], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "(3, 384)" in result.stdout


def test_a_text_package_prepared_before_it_kept_samples_is_prepared_again(text_package: Path, tmp_path: Path) -> None:
    """`make run` after an upgrade rebuilds a zoo package that lacks a file today's recipe writes."""
    stale = tmp_path / "minilm-l6"
    stale.mkdir()
    manifest = json.loads((text_package / "manifest.json").read_text())
    del manifest["files"][SAMPLES_FILE]
    (stale / "manifest.json").write_text(json.dumps(manifest))
    for name in manifest["files"]:
        (stale / name).symlink_to(text_package / name)
    assert is_prepared(stale) and not is_prepared(stale, files=(SAMPLES_FILE,))
    assert is_prepared(text_package, files=(SAMPLES_FILE,))

"""``route-llm retrain --full`` on a tiny BERT (2 layers, width 32): the encoder is rebuilt from its int8 ONNX file,
fine-tuned with the head, exported, judged like fast mode, and written. Needs the train extra (torch,
transformers, optimum); CI without it skips these, as it skips the fast-mode tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

pytest.importorskip("scipy", reason="the train extra is not installed (training.evaluate needs scipy)")
pytest.importorskip("torch", reason="the train extra is not installed (retrain --full needs torch)")
pytest.importorskip("transformers", reason="the train extra is not installed (retrain --full needs transformers)")
pytest.importorskip("optimum.exporters.onnx", reason="the train extra is not installed (export needs optimum)")

from proxy.cli import main  # noqa: E402
from router import Router  # noqa: E402
from tests.helpers import NAMES, make_head  # noqa: E402
from tests.helpers import format2_model as _format2
from tests.helpers import retrain_data as _data  # noqa: E402
from tests.helpers import retrain_feedback as _feedback
from tests.router.conftest import build_tokenizer  # noqa: E402
from training import encoder  # noqa: E402
from training.network import recover_encoder  # noqa: E402
from training.retrain import RetrainConfig, RetrainError, retrain  # noqa: E402

WIDTH = 32


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A format-2 model whose encoder is a randomly initialised 2-layer BERT exported to int8 ONNX."""
    import torch
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    checkpoint = root / "checkpoint"
    BertModel(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=WIDTH, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, max_position_embeddings=64),
              add_pooling_layer=False).save_pretrained(checkpoint)
    tokenizer.save(str(checkpoint / "tokenizer.json"))
    exported = encoder.export(root / "int8", source=checkpoint)
    model = root / "current"
    model.mkdir()
    (model / "model.onnx").write_bytes((exported / "model.onnx").read_bytes())
    tokenizer.save(str(model / "tokenizer.json"))
    make_head(WIDTH + len(NAMES)).save(model / "head.npz")
    meta = encoder.encoder_meta(NAMES, max_length=16, head_fraction=0.5, pad_token_id=0)
    meta |= {"quantiles": [[i / 100, i / 100] for i in range(101)], "version": "tiny-bert"}
    (model / "router.json").write_text(json.dumps(meta))
    return model


def test_the_encoder_is_rebuilt_from_its_int8_graph(tiny_bert: Path, tmp_path: Path) -> None:
    import torch
    from transformers import BertModel

    rebuilt = BertModel.from_pretrained(str(recover_encoder(tiny_bert, tmp_path / "rebuilt")), add_pooling_layer=False)
    config = rebuilt.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == \
        (2, WIDTH, 4, 64)
    current = Router.load(tiny_bert).classifier
    text = "w20 w21 w22 w9 w9 w300"
    onnx_vector = current.head_inputs([text])[0, :WIDTH]
    with torch.inference_mode():
        states = rebuilt(input_ids=torch.tensor(current.token_ids([text]))).last_hidden_state[0].double().mean(0)
    vector = states.numpy() / np.linalg.norm(states.numpy())
    assert float(vector @ onnx_vector) > 0.99  # int8 weights dequantised: the same encoder up to rounding


def test_full_mode_moves_the_encoder_and_writes_a_loadable_version(tiny_bert: Path, tmp_path: Path) -> None:
    config = RetrainConfig(full=True, full_steps=12, batch_size=32, encoder_lr=1e-3, head_lr=1e-2, freeze_layers=1,
                           tolerance=1.0, threads=1)
    result = retrain(_data(tmp_path), [_feedback(tmp_path)], current_dir=tiny_bert, out_dir=tmp_path / "models",
                     work_dir=tmp_path / "work", config=config)
    assert result.accepted, result.table
    assert result.path is not None and result.version is not None and result.version.startswith("tiny-bert+ft")
    new_encoder = (result.path / "model.onnx").read_bytes()
    assert hashlib.sha256(new_encoder).digest() != hashlib.sha256((tiny_bert / "model.onnx").read_bytes()).digest()
    outputs = [o.name for o in onnx.load_from_string(new_encoder).graph.output]
    assert outputs == ["last_hidden_state"]
    meta = json.loads((result.path / "router.json").read_text())
    assert meta["retrain"]["config"]["full"] is True and meta["retrain"]["parent_version"] == "tiny-bert"
    scores = Router.load(result.path).score(["w20 w21 w9 w9", "w30 w31 w3"])
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_full_mode_refuses_an_encoder_it_cannot_rebuild(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match="not a BERT encoder"):  # the fast-mode fixture's graph is no BERT
        retrain(_data(tmp_path), [_feedback(tmp_path)], current_dir=_format2(tmp_path), out_dir=tmp_path / "models",
                work_dir=tmp_path / "work", config=RetrainConfig(full=True, full_steps=1, threads=1))


@pytest.mark.parametrize(("option", "value"), [("--epochs", "0"), ("--epochs", "-1"), ("--epochs", "abc"),
                                             ("--epochs", "21"), ("--words", "maybe"), ("--words", "")])
def test_bad_retrain_options_are_refused_by_the_cli(tmp_path: Path, option: str, value: str) -> None:
    feedback = _feedback(tmp_path)
    result = CliRunner().invoke(main, ["retrain", "--full", option, value, "--feedback", str(feedback),
                                       "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and option in result.output

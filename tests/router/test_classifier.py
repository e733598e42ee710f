"""Loading a model directory and scoring texts with it: router.classifier and router.Router."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer

from router import Classifier, InferenceError, ModelLoadError, ModelMeta, Router
from router.classifier import CHARS_PER_TOKEN_BOUND, load_meta, load_session, load_tokenizer
from tests.router.conftest import (
    SHIPPED_MODEL_DIR,
    MakeModelDir,
    build_onnx,
    build_tokenizer,
    words,
)

NON_LATIN = [
    "这个问题需要强模型吗？请详细证明黎曼猜想。",
    "ما هو أفضل نموذج للإجابة على هذا السؤال؟",
    "🤖🚀 can you route this? 🔥🔥",
    "Привет, как дела?",
    "\u200b\u00a0\ufeff",
]


def test_router_loads_fixture_model_and_exposes_meta_and_version(model_dir: Path) -> None:
    loaded = Router.load(model_dir)
    assert loaded.path == model_dir
    assert loaded.version == "fixture-1"
    assert loaded.meta.labels == ("weak_ok", "strong_needed")
    assert loaded.meta.strong_index == 1
    assert loaded.meta.quantiles[-1] == (1.0, 1.0)


def test_router_load_accepts_a_string_path(model_dir: Path) -> None:
    assert Router.load(str(model_dir)).score(["w1 w2"]) == Router.load(model_dir).score(["w1 w2"])


def test_scores_are_probabilities_in_unit_interval(fixture_router: Router) -> None:
    scores = fixture_router.score([words(i, i % 40) for i in range(100)])
    assert len(scores) == 100
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) > 10  # the fixture model really depends on its input


def test_scoring_is_deterministic_across_calls_and_loads(model_dir: Path) -> None:
    texts = [words(i * 7, i) for i in range(50)]
    first = Router.load(model_dir).score(texts)
    assert Router.load(model_dir).score(texts) == first
    assert Router.load(model_dir, threads=2).score(texts) == pytest.approx(first, abs=1e-6)


def test_batch_scores_equal_one_by_one(fixture_router: Router) -> None:
    texts = [words(i * 3, (i * 37) % 60) for i in range(75)]
    batched = fixture_router.score(texts)
    single = [fixture_router.score([text])[0] for text in texts]
    assert batched == pytest.approx(single, abs=1e-5)


def test_score_of_a_prompt_does_not_depend_on_its_neighbours(fixture_router: Router) -> None:
    # Exact equality: each sequence runs on its own, so no padding or shared quantisation scale can leak in.
    alone = fixture_router.score(["w1 w2 w3"])[0]
    assert fixture_router.score([words(0, 90), "w1 w2 w3", ""])[1] == alone


def test_score_equals_softmax_of_raw_session_logits(model_dir: Path) -> None:
    loaded = Router.load(model_dir)
    session = load_session(model_dir / "model.onnx")
    ids = loaded.classifier.token_ids(["w5 w6 w7"])[0]
    (logits,) = session.run(None, {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64)})
    expected = math.exp(logits[0, 1]) / (math.exp(logits[0, 0]) + math.exp(logits[0, 1]))
    assert loaded.score(["w5 w6 w7"]) == pytest.approx([expected], abs=1e-6)


def test_strong_label_index_is_read_from_metadata(make_model_dir: MakeModelDir) -> None:
    normal = Router.load(make_model_dir()).score(["w1 w2 w3", "w9"])
    swapped = Router.load(make_model_dir(labels=["strong_needed", "weak_ok"])).score(["w1 w2 w3", "w9"])
    assert swapped == pytest.approx([1.0 - s for s in normal], abs=1e-6)


def test_empty_and_whitespace_prompts_are_scored_as_special_tokens_only(fixture_router: Router) -> None:
    texts = ["", "   ", "\n\t \r\n"]
    assert fixture_router.classifier.token_ids(texts) == [[2, 3]] * 3
    scores = fixture_router.score(texts)
    assert scores[0] == scores[1] == scores[2]
    assert 0.0 <= scores[0] <= 1.0


def test_empty_input_list_returns_empty_list(fixture_router: Router) -> None:
    assert fixture_router.score([]) == []


def test_non_string_text_raises_type_error(fixture_router: Router) -> None:
    with pytest.raises(TypeError, match="strings"):
        fixture_router.score(["ok", None])  # type: ignore[list-item]


def test_lone_surrogates_are_scored_as_question_marks(fixture_router: Router) -> None:
    # json.loads('"\\ud800"') gives one: `route-llm score` read it from a JSONL line and crashed.
    assert fixture_router.score(["half a pair: \ud800!", "ok"]) == fixture_router.score(["half a pair: ?!", "ok"])


def test_non_latin_prompts_are_scored(fixture_router: Router) -> None:
    scores = fixture_router.score(NON_LATIN)
    assert len(scores) == len(NON_LATIN)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_long_prompt_keeps_head_and_tail_token_ids(fixture_router: Router) -> None:
    # max_length 16 → 14 text tokens: the first 7 and the last 7. Word wN has id N + 4.
    ids = fixture_router.classifier.token_ids([words(0, 100)])[0]
    assert ids == [2] + [4 + i for i in range(7)] + [4 + i for i in range(93, 100)] + [3]


def test_prompt_at_exactly_max_length_is_not_truncated(fixture_router: Router) -> None:
    assert fixture_router.classifier.token_ids([words(0, 14)])[0] == [2] + [4 + i for i in range(14)] + [3]


def test_head_only_truncation_keeps_the_first_tokens(make_model_dir: MakeModelDir) -> None:
    loaded = Router.load(make_model_dir(truncation="head"))
    assert loaded.classifier.token_ids([words(0, 100)])[0] == [2] + [4 + i for i in range(14)] + [3]


def test_head_fraction_sets_the_head_share(make_model_dir: MakeModelDir) -> None:
    loaded = Router.load(make_model_dir(head_fraction=0.25))  # round(0.25 * 14) = 4 head, 10 tail
    ids = loaded.classifier.token_ids([words(0, 100)])[0]
    assert ids == [2] + [4 + i for i in range(4)] + [4 + i for i in range(90, 100)] + [3]


def test_text_prefix_is_tokenized_in_front_of_every_prompt(make_model_dir: MakeModelDir) -> None:
    plain, prefixed = Router.load(make_model_dir()), Router.load(make_model_dir(text_prefix="w7 w8 "))
    assert prefixed.meta.text_prefix == "w7 w8 "
    assert prefixed.classifier.token_ids(["w1 w2", ""]) == [[2, 11, 12, 5, 6, 3], [2, 11, 12, 3]]
    assert plain.classifier.token_ids(["w1 w2"]) == [[2, 5, 6, 3]]  # no prefix unless router.json sets one
    assert prefixed.score(["w1 w2"]) == plain.score(["w7 w8 w1 w2"])


def test_text_prefix_survives_truncation_even_without_a_head_share(make_model_dir: MakeModelDir) -> None:
    # head_fraction 0 keeps only the tail, yet the prefix (3 tokens) stays: 3 prefix + 11 tail = 14 text tokens
    loaded = Router.load(make_model_dir(text_prefix="w7 w8 w9 ", head_fraction=0.0))
    ids = loaded.classifier.token_ids([words(100, 100)])[0]
    assert ids == [2, 11, 12, 13] + [4 + i for i in range(189, 200)] + [3]


def test_text_prefix_filling_max_length_raises_model_load_error(make_model_dir: MakeModelDir) -> None:
    with pytest.raises(ModelLoadError, match="max_length 16 leaves no room for text after text_prefix"):
        Router.load(make_model_dir(text_prefix="w1 " * 14))


def test_100k_character_prompt_matches_truncation_of_the_full_text(fixture_router: Router, model_dir: Path) -> None:
    text = words(0, 25_000)  # about 120k characters
    assert len(text) > 100_000
    full = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    full.no_truncation()
    every = full.encode(text, add_special_tokens=False).ids
    assert fixture_router.classifier.token_ids([text])[0] == [2] + every[:7] + every[-7:] + [3]
    assert 0.0 <= fixture_router.score([text])[0] <= 1.0


def test_100k_character_prompt_without_spaces_is_scored(fixture_router: Router) -> None:
    assert 0.0 <= fixture_router.score(["x" * 100_000, "这" * 100_000])[1] <= 1.0


def test_tokenizer_saved_truncation_and_padding_are_ignored(fixture_router: Router) -> None:
    # build_tokenizer saves truncation to 5 tokens and padding to 40; neither may reach the model.
    assert len(fixture_router.classifier.token_ids([words(0, 10)])[0]) == 12


def test_token_type_ids_input_is_fed_zeros(make_model_dir: MakeModelDir) -> None:
    # The token_type_ids variant adds sum(token_type_ids) to the logits, so zeros leave scores unchanged.
    plain = Router.load(make_model_dir()).score(["w1 w2", "w3"])
    typed = Router.load(make_model_dir(token_type_ids=True)).score(["w1 w2", "w3"])
    assert typed == pytest.approx(plain, abs=1e-6)


def test_special_tokens_fall_back_to_the_post_processor(make_model_dir: MakeModelDir) -> None:
    loaded = Router.load(make_model_dir(specials="template"))  # <s> = 2, </s> = 3 only via the template
    assert loaded.classifier.token_ids(["w0 w1"]) == [[2, 4, 5, 3]]


def test_tokenizer_without_special_tokens_feeds_bare_text_ids(make_model_dir: MakeModelDir) -> None:
    assert Router.load(make_model_dir(specials="none")).classifier.token_ids(["w0 w1"]) == [[4, 5]]


def test_logits_output_is_chosen_by_name_among_several(model_dir: Path) -> None:
    expected = Router.load(model_dir).score(["w1 w2"])
    model = build_onnx(504)
    model.graph.node.append(onnx.helper.make_node("Identity", ["logits"], ["extra"]))
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, ["batch", 2]))
    onnx.save(model, str(model_dir / "model.onnx"))
    assert Router.load(model_dir).score(["w1 w2"]) == expected
    model.graph.output[1].name = "probabilities"
    model.graph.node[6].output[0] = "probabilities"
    model.graph.node[7].input[0] = "probabilities"
    onnx.save(model, str(model_dir / "model.onnx"))
    with pytest.raises(ModelLoadError, match="none is named 'logits'"):
        Router.load(model_dir)


def test_float_inputs_are_rejected_at_load(model_dir: Path) -> None:
    model = build_onnx(504)
    model.graph.input[1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save(model, str(model_dir / "model.onnx"))
    with pytest.raises(ModelLoadError, match="int64 or int32"):
        Router.load(model_dir)


def test_onnxruntime_failure_raises_inference_error(model_dir: Path) -> None:
    onnx.save(build_onnx(4), str(model_dir / "model.onnx"))  # embedding too small for the vocabulary
    loaded = Router.load(model_dir)
    with pytest.raises(InferenceError, match="onnxruntime failed on a sequence of 3 tokens"):
        loaded.score(["w400"])


def test_non_finite_logits_raise_inference_error(model_dir: Path) -> None:
    model = build_onnx(504)
    model.graph.node[6].output[0] = "raw"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([np.inf], np.float32), "inf"))
    model.graph.node.append(onnx.helper.make_node("Mul", ["raw", "inf"], ["logits"]))
    onnx.save(model, str(model_dir / "model.onnx"))
    with pytest.raises(InferenceError, match="non-finite"):
        Router.load(model_dir).score(["w1 w2"])


def test_output_shape_mismatch_raises_inference_error(make_model_dir: MakeModelDir) -> None:
    loaded = Router.load(make_model_dir(labels=["a", "b", "strong_needed"]))
    with pytest.raises(InferenceError, match="shape"):
        loaded.score(["w1"])


def test_load_session_uses_only_the_cpu_provider(model_dir: Path) -> None:
    assert load_session(model_dir / "model.onnx", threads=2).get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_load_session_rejects_bad_thread_counts(model_dir: Path, threads: object) -> None:
    with pytest.raises(ValueError, match="threads"):
        load_session(model_dir / "model.onnx", threads=threads)  # type: ignore[arg-type]


def test_classifier_can_be_built_from_ready_parts(model_dir: Path) -> None:
    classifier = Classifier(
        session=load_session(model_dir / "model.onnx"),
        tokenizer=load_tokenizer(model_dir / "tokenizer.json"),
        meta=load_meta(model_dir / "router.json"),
    )
    assert classifier.score(["w1"]) == Router.load(model_dir).score(["w1"])


# --- load errors: each names the offending path ------------------------------------------------------------


def test_missing_model_directory_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model directory not found") as info:
        Router.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_empty_directory_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found") as info:
        Router.load(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("model.onnx", "ONNX model file not found"),
        ("tokenizer.json", "tokenizer file not found"),
        ("router.json", "router metadata file not found"),
    ],
)
def test_missing_file_raises_model_load_error_naming_it(model_dir: Path, name: str, what: str) -> None:
    (model_dir / name).unlink()
    with pytest.raises(ModelLoadError, match=what) as info:
        Router.load(model_dir)
    assert str(model_dir / name) in str(info.value)


@pytest.mark.parametrize(
    "content", [b"", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), b"not an onnx file at all"]
)
def test_corrupt_model_file_raises_model_load_error_naming_it(model_dir: Path, content: bytes) -> None:
    (model_dir / "model.onnx").write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model") as info:
        Router.load(model_dir)
    assert str(model_dir / "model.onnx") in str(info.value)


def test_model_with_unexpected_inputs_raises_model_load_error(model_dir: Path) -> None:
    model = build_onnx(504)
    model.graph.input[0].name = "ids"
    model.graph.node[0].input[1] = "ids"
    onnx.save(model, str(model_dir / "model.onnx"))
    with pytest.raises(ModelLoadError, match="model inputs must be") as info:
        Router.load(model_dir)
    assert str(model_dir / "model.onnx") in str(info.value)


@pytest.mark.parametrize("content", ["", "{}", "[1, 2", '{"model": 5}', "\x00\x01 binary"])
def test_bad_tokenizer_file_raises_model_load_error_naming_it(model_dir: Path, content: str) -> None:
    (model_dir / "tokenizer.json").write_text(content, encoding="utf-8")
    with pytest.raises(ModelLoadError, match="not a valid tokenizer.json") as info:
        Router.load(model_dir)
    assert str(model_dir / "tokenizer.json") in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level must be a JSON object"),
    ],
)
def test_unparsable_router_json_raises_model_load_error(model_dir: Path, content: str, message: str) -> None:
    (model_dir / "router.json").write_text(content, encoding="utf-8")
    with pytest.raises(ModelLoadError, match=message) as info:
        Router.load(model_dir)
    assert str(model_dir / "router.json") in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 3}, "unsupported format"),
        ({"format": 2}, "missing key\\(s\\): features, head"),
        ({"labels": ["only_one"]}, "'labels'"),
        ({"labels": ["a", "a"]}, "'labels'"),
        ({"strong_label": "missing_label"}, "not one of the labels"),
        ({"max_length": 2}, "'max_length'"),
        ({"max_length": "256"}, "'max_length'"),
        ({"max_length": 100000}, "'max_length' must be an integer from 8 to 512 .* got 100000"),
        ({"max_length": 513}, "'max_length'"),
        ({"max_length": 7}, "'max_length'"),
        ({"max_length": 128.0}, "'max_length'"),
        ({"head_fraction": float("nan")}, "'head_fraction'"),
        ({"version": "v1\r\nx-injected: 1"}, "'version' must be .* printable ASCII"),
        ({"version": "v\u00e9"}, "'version'"),
        ({"version": "v" * 257}, "'version' must be a non-empty string of at most 256"),
        ({"truncation": "middle"}, "'truncation'"),
        ({"head_fraction": 1.5}, "'head_fraction'"),
        ({"pad_token_id": -1}, "'pad_token_id'"),
        ({"text_prefix": 3}, "'text_prefix'"),
        ({"text_prefix": "w1 " * 30}, "'text_prefix' must be a string of at most 64"),
        ({"version": ""}, "'version'"),
        ({"quantiles": [[0.0, 0.5], [1.0, 0.2]]}, "'quantiles'"),
        ({"quantiles": "none"}, "'quantiles'"),
    ],
)
def test_invalid_router_json_value_raises_model_load_error(
    make_model_dir: MakeModelDir, change: dict[str, object], message: str
) -> None:
    directory = make_model_dir(**change)
    with pytest.raises(ModelLoadError, match=message) as info:
        Router.load(directory)
    assert str(directory / "router.json") in str(info.value)


@pytest.mark.parametrize("max_length", [8, 512])
def test_max_length_at_either_end_of_its_range_loads(make_model_dir: MakeModelDir, max_length: int) -> None:
    assert Router.load(make_model_dir(max_length=max_length)).meta.max_length == max_length


def test_router_json_missing_keys_are_listed(model_dir: Path) -> None:
    meta = json.loads((model_dir / "router.json").read_text(encoding="utf-8"))
    del meta["labels"], meta["quantiles"]
    (model_dir / "router.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="missing key\\(s\\): labels, quantiles"):
        Router.load(model_dir)


def test_pad_token_outside_vocabulary_raises_model_load_error(make_model_dir: MakeModelDir) -> None:
    with pytest.raises(ModelLoadError, match="pad_token_id 9999"):
        Router.load(make_model_dir(pad_token_id=9999))


def test_model_meta_ignores_informational_keys() -> None:
    meta = ModelMeta.from_dict(
        {
            "format": 1,
            "labels": ["weak_ok", "strong_needed"],
            "strong_label": "strong_needed",
            "max_length": 8,
            "truncation": "head_tail",
            "head_fraction": 0.5,
            "pad_token_id": 0,
            "quantiles": [[0.0, 0.1], [1.0, 0.9]],
            "version": "v",
            "data": {"x": 1},
        }
    )
    assert meta.quantiles == ((0.0, 0.1), (1.0, 0.9))


def test_build_tokenizer_fixture_is_used_as_saved(model_dir: Path) -> None:
    # Guards the fixture itself: the saved tokenizer really has truncation on, so the test above is meaningful.
    assert Tokenizer.from_file(str(model_dir / "tokenizer.json")).truncation is not None
    assert build_tokenizer().get_vocab_size() == 504


def test_router_package_imports_no_web_or_training_libraries() -> None:
    code = (
        "import sys, router, router.scoring; "
        "bad = {'torch', 'transformers', 'starlette', 'litellm', 'prometheus_client', 'click'}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "[]"


# --- the model shipped inside the package -------------------------------------------------------------------

def test_shipped_model_loads_by_default_and_scores() -> None:
    loaded = Router.load()
    assert loaded.path == SHIPPED_MODEL_DIR
    assert loaded.version
    texts = ["hi", "Prove that there are infinitely many primes.", "", "  ", *NON_LATIN, "word " * 20_000]
    scores = loaded.score(texts)
    assert len(scores) == len(texts)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert loaded.score(texts) == scores


def test_shipped_model_batch_scores_equal_one_by_one() -> None:
    loaded = Router.load()
    texts = [
        "What is 2 + 2?",
        "Write a sonnet about entropy in the style of Keats.",
        *NON_LATIN,
        "Summarise: " + "The quick brown fox jumps over the lazy dog. " * 60,
    ]
    assert loaded.score(texts) == pytest.approx([loaded.score([t])[0] for t in texts], abs=1e-5)


_LONG_TEXTS = {
    "english": " ".join(f"Section {i}: the committee reviewed the budget, asked why costs rose by {i % 17} percent, "
                        f"and requested a plan before the meeting on day {i % 28 + 1}." for i in range(400)),
    "chinese": "".join(f"第{i}章：委员会审查了预算，询问成本为何上升了百分之{i % 17}，并要求在会议前提交计划。"
                       for i in range(1500)),
    "japanese": "".join(f"第{i}節では、東京の天気について説明します。明日は晴れ、気温は{i % 30}度です。"
                        for i in range(1500)),
    "code": "\n".join(f"def handler_{i}(request):\n    return {{'id': {i}, 'items': [x * {i} for x in range(10)]}}"
                      for i in range(600)),
}


@pytest.mark.parametrize("kind", sorted(_LONG_TEXTS))
def test_the_shipped_router_scores_a_long_text_as_it_would_untruncated(router: Router, kind: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Only max_length tokens of a text reach the encoder (head and tail), so the router tokenizes only
    # CHARS_PER_TOKEN_BOUND characters per token of each end. On long real text of several scripts (CJK has no
    # spaces: one token per character or two) that cut gives the very ids, and the score, of the whole text.
    text = _LONG_TEXTS[kind]
    classifier = router.classifier
    assert len(text) > 4 * classifier.meta.max_length * CHARS_PER_TOKEN_BOUND  # really cut
    cut_ids, cut_score = classifier.token_ids([text]), router.score([text])
    monkeypatch.setattr(classifier, "_char_limit", len(text))  # tokenize all of it
    assert classifier.token_ids([text]) == cut_ids
    assert router.score([text]) == cut_score

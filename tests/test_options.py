"""The options schema: one declaration per option, read by Python, the CLI, bench variants and the trainers."""

import dataclasses

import pytest

from tokenleap import METHODS, TokenleapError
from tokenleap.bench.harness import parse_variant
from tokenleap.cli import build_parser, main
from tokenleap.options import Options, build, describe, kinds, option, parse_text
from tokenleap.train.draft import DraftTrainConfig
from tokenleap.train.early_exit import EarlyExitTrainConfig
from tokenleap.train.lookahead import LookaheadTrainConfig

CLASSES = sorted({spec.options for spec in METHODS.values()} | {DraftTrainConfig, EarlyExitTrainConfig,
                                                                  LookaheadTrainConfig}, key=lambda c: c.__name__)


@dataclasses.dataclass
class Demo(Options):
    count: int = option(2, "how many", minimum=1, maximum=8)
    ratio: float = option(0.5, "a share", minimum=0, below=1)
    mode: str = option("a", "which", choices=("a", "b"))
    flag: bool = option(False, "on or off")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_option_declares_type_help_and_a_valid_default(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
        assert isinstance(f.default, kinds(cls)[f.name]) or kinds(cls)[f.name] is float
    cls().validate()  # the defaults obey their own rules


def test_numbers_are_converted_where_python_and_json_write_them_either_way():
    assert build(Demo, {"count": 4.0, "ratio": 0}, "demo") == Demo(count=4, ratio=0.0)
    assert type(build(Demo, {"ratio": 0}, "demo").ratio) is float


@pytest.mark.parametrize("values, message", [
    ({"cuont": 1}, r"demo has no option 'cuont' \(its options: count, flag, mode, ratio\)"),
    ({"count": "4"}, "option 'count' of demo must be int, got '4'"),  # Python callers pass numbers
    ({"count": True}, "option 'count' of demo must be int, got True"),
    ({"count": 2.5}, "option 'count' of demo must be int, got 2.5"),
    ({"flag": 1}, "option 'flag' of demo must be bool, got 1"),
    ({"count": 0}, r"count must be an integer in \[1, 8\], got 0"),
    ({"count": 9}, r"count must be an integer in \[1, 8\], got 9"),
    ({"ratio": 1.0}, r"ratio must be a number in \[0, 1\), got 1.0"),
    ({"ratio": float("nan")}, r"ratio must be a number in \[0, 1\), got nan"),
    ({"mode": "c"}, "unknown mode 'c'; use one of a, b"),
])
def test_one_message_per_rule(values, message):
    with pytest.raises(TokenleapError, match=f"^{message}$"):
        build(Demo, values, "demo")


def test_text_from_a_command_line_becomes_the_options_type():
    assert parse_text(int, "4") == 4 and build(Demo, {"count": parse_text(int, "4.0")}, "d").count == 4
    assert parse_text(float, "1") == 1 and parse_text(bool, "True") is True and parse_text(bool, "false") is False
    assert parse_text(str, "2") == "2"  # a path may look like a number
    assert parse_text(int, "four") == "four"  # refused by build, with its message
    assert describe(Demo, "ratio") == "a number in [0, 1)" and describe(Demo, "mode") == "one of a, b"


def test_bench_variants_and_python_keywords_read_the_same_schema():
    name, values = parse_variant("mtad@tau=1+gamma=3.0+without_replacement=true")
    assert METHODS[name].make_options(values) == METHODS[name].make_options(
        {"tau": 1.0, "gamma": 3, "without_replacement": True})
    with pytest.raises(TokenleapError, match="must be bool"):
        METHODS["mtad"].make_options(parse_variant("mtad@without_replacement=1")[1])


def test_cli_flags_have_help_from_the_schema():
    parser, _ = build_parser()
    text = parser._subparsers._group_actions[0].choices["generate"].format_help()
    assert "sps: draft tokens per round" in text and "mtad, mtad-tree: block length drafted" in text
    train = parser._subparsers._group_actions[0].choices["train"]._subparsers._group_actions[0].choices
    assert "one of kl, ce" in train["lookahead"].format_help()


def test_trainer_flags_are_checked_before_anything_loads(capsys):
    assert main(["train", "lookahead", "--loss", "mse"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown loss 'mse'; use one of kl, ce"
    assert main(["train", "lookahead", "--cuts", "0"]) == 2
    assert "cuts must be an integer >= 1, got 0" in capsys.readouterr().err

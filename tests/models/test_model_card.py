"""The model card's figures are the ones the quickstart notebook shows (nbval re-checks that output)."""
import json
import re

from edgekit.core.paths import data_dir, default_model_path


def test_card_perplexity_is_the_whole_split_and_quickstart_says_its_slice():
    """The card's eval row scores the whole split; the quickstart scores its first MAX_TOKENS tokens (it says so,
    and its closing sets the two figures apart), so the two agree on what each covers, not on the value."""
    from edgekit.core.paths import eval_token_ids
    from edgekit.models.load import load_tokenizer

    card = (default_model_path() / "README.md").read_text()
    card_ppl = re.search(r"\| `eval` \| [^|]+\| ([\d.]+) \| \[([\d.]+), ([\d.]+)\] \| ([\d,]+) \|", card)
    assert card_ppl, "the model card has no eval perplexity row"
    whole = len(eval_token_ids(load_tokenizer("default"), "eval")) - 1
    assert int(card_ppl.group(4).replace(",", "")) == whole
    notebook = json.loads((data_dir().parent / "notebooks" / "00_quickstart.ipynb").read_text())
    shown = "".join("".join(o.get("text", "")) for c in notebook["cells"] if c["cell_type"] == "code"
                    for o in c.get("outputs", []) if "eval perplexity" in "".join(o.get("text", "")))
    nb_ppl = re.search(r"eval perplexity ([\d.]+) \(95% CI ([\d.]+)-([\d.]+)\) over ([\d,]+) tokens", shown)
    assert nb_ppl, "the quickstart notebook shows no eval perplexity"
    params = "".join("".join(c["source"]) for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    limit = int(re.search(r"MAX_TOKENS = (\d+)", params).group(1))
    assert int(nb_ppl.group(4).replace(",", "")) == min(limit, whole + 1) - 1


def test_card_recipe_matches_training_log():
    log = json.loads((default_model_path() / "training_log.json").read_text())
    card = (default_model_path() / "README.md").read_text()
    assert f"{log['parameters']:,}-parameter" in card
    assert f"Best validation loss: {log['best_val_loss']:.4f}" in card

"""The Hugging Face guide's perplexity loop ("Perplexity of fixed-length models"), written out once
as the independent reference that edgekit.measure.quality and the evaluate metric are tested against."""
import math


def hf_guide_perplexity(ids, context, stride, window_loss):
    """Perplexity of 1-D ``ids`` and its scored-token count; ``window_loss(input_ids, target_ids)``
    is the mean loss over a window's targets that are not -100 (a model's ``labels=`` loss)."""
    encodings = ids[None]
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + context, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        loss = window_loss(input_ids, target_ids)
        num_loss_tokens = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens

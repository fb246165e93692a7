"""Scores of each task, from predictions and references.

VQA accuracy and its answer normalisation follow the official VQA evaluation; POPE's and multiple choice's counts
use `torchmetrics`; caption metrics are `pycocoevalcap`'s scorers (CIDEr always, BLEU-4, METEOR and ROUGE-L where
their Java tools run).
"""

import re
import shutil
from collections.abc import Sequence

import torch

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "notve": "not've", "oclock": "o'clock", "shant": "shan't", "shed": "she'd", "shes": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "somebodys": "somebody's", "someones": "someone's",
    "thats": "that's", "thered": "there'd", "theres": "there's", "theyd": "they'd", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "wed": "we'd", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!*#%^&$"
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(answer: str) -> str:
    """The official VQA answer normalisation: punctuation, number words to digits, articles and contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    for mark in _PUNCTUATION + "'":
        if (mark + " " in text or " " + mark in text) or re.search(_COMMA_STRIP, text) is not None:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = _PERIOD_STRIP.sub("", text)
    words = [_NUMBERS.get(word, word) for word in text.split() if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """min(#human answers equal to the prediction / 3, 1), after normalising both (10 answers per question)."""
    predicted = normalize_vqa_answer(prediction)
    matches = sum(normalize_vqa_answer(answer) == predicted for answer in answers)
    return min(matches / 3, 1.0)


def yes_no(text: str) -> str:
    """POPE's reading of an answer: "no" when it says no or not, else "yes" (as LLaVA's and lmms-eval's POPE)."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    return "no" if words & {"no", "not"} else "yes"


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of "yes" as the positive class, and the share of "yes" answers."""
    from torchmetrics.functional.classification import (
        binary_accuracy, binary_f1_score, binary_precision, binary_recall,
    )

    predicted = torch.tensor([yes_no(p) == "yes" for p in predictions], dtype=torch.long)
    target = torch.tensor([label.strip().lower() == "yes" for label in labels], dtype=torch.long)
    return {
        "accuracy": binary_accuracy(predicted, target).item(),
        "precision": binary_precision(predicted, target).item(),
        "recall": binary_recall(predicted, target).item(),
        "f1": binary_f1_score(predicted, target).item(),
        "yes_ratio": predicted.float().mean().item(),
    }


def choice_letter(text: str, options: dict[str, str]) -> str | None:
    """
    The option an answer chooses, as MMBench reads it: a letter standing alone ("B", "B.", "(B)", "B) blue",
    "The answer is B"), else the one option whose text the answer names; `None` when neither says.
    """
    letters = "|".join(map(re.escape, options))
    stripped = text.strip()
    standalone = re.match(rf"^\(?({letters})(?:[.):]|\s*$)", stripped) or re.search(
        rf"answer is:?\s*\(?({letters})\b(?![a-z])", stripped, flags=re.IGNORECASE)
    if standalone:
        return standalone.group(1).upper()
    answer_words = " ".join(re.findall(r"[a-z0-9]+", stripped.lower()))
    named = [letter for letter, option in options.items()
             if re.search(rf"\b{re.escape(' '.join(re.findall(r'[a-z0-9]+', option.lower())))}\b", answer_words)]
    return named[0] if len(named) == 1 else None


def caption_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """CIDEr, and BLEU-4, METEOR and ROUGE-L where they run, of captions keyed by sample id, PTB-tokenised as COCO's."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    results = {key: [{"caption": predictions[key]}] for key in predictions}
    truths = {key: [{"caption": text} for text in references[key]] for key in predictions}
    has_java = shutil.which("java") is not None
    if has_java:
        tokenizer = PTBTokenizer()
        results, truths = tokenizer.tokenize(results), tokenizer.tokenize(truths)
        scores = {"tokenizer": "PTB"}
    else:  # COCO's tokenisation approximated by lower-casing and dropping punctuation
        results, truths = simple_tokenize(results), simple_tokenize(truths)
        scores = {"tokenizer": "simple (Java not found for the PTB tokenizer)"}
    scores["CIDEr"] = float(Cider().compute_score(truths, results)[0])
    scores["BLEU-4"] = float(Bleu(4).compute_score(truths, results, verbose=0)[0][3])
    scores["ROUGE-L"] = float(Rouge().compute_score(truths, results)[0])
    if has_java:
        scores["METEOR"] = float(Meteor().compute_score(truths, results)[0])
    else:
        scores["METEOR_error"] = "METEOR runs on Java, which was not found"
    return scores


def simple_tokenize(captions: dict[str, list[dict]]) -> dict[str, list[str]]:
    return {key: [" ".join(re.findall(r"[a-z0-9]+", item["caption"].lower())) for item in items]
            for key, items in captions.items()}

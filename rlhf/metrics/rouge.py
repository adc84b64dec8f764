"""ROUGE as an `evaluate` metric module, loaded from this file by ``evaluate.load(path)``.

`evaluate.load("rouge")` fetches its script from the Hugging Face hub, which offline machines
cannot reach; this module computes the same scores with the same `rouge_score` package.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer, scoring

_KEYS = ("rouge1", "rouge2", "rougeL")


class Rouge(evaluate.Metric):
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of predictions against one reference each."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="ROUGE-1/2/L F-measure (rouge_score), aggregated by bootstrap (mid value).",
            citation="Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        scorer = rouge_scorer.RougeScorer(list(_KEYS), use_stemmer=False)
        aggregator = scoring.BootstrapAggregator()
        for prediction, reference in zip(predictions, references, strict=True):
            aggregator.add_scores(scorer.score(reference, prediction))
        result = aggregator.aggregate()
        return {key: float(result[key].mid.fmeasure) for key in _KEYS}

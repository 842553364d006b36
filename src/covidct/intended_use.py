"""The research-use statement every interface shows (README, CLI help, model card, reports)."""

RESEARCH_USE_STATEMENT = (
    "Research use only. covidct is not a medical device and is not for diagnosis, triage or any "
    "clinical decision; its outputs have not been validated for clinical use and must not replace "
    "a radiologist or an approved test (RT-PCR)."
)

import os

import pytest

os.environ.setdefault("ABFT_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def embedded():
    """The real embedded model and tokenizer, loaded once per session."""
    from abft.models import load_model

    return load_model("smollm2-135m")

import pytest


@pytest.fixture(scope="session")
def be():
    """The cpu backend. It is required: if it cannot be loaded, tests FAIL."""
    try:
        from deepid2_core.backends import get_backend
        return get_backend("cpu")
    except Exception as e:  # noqa: BLE001 - report whatever went wrong
        pytest.fail(f"cpu backend unavailable (build the extension): {type(e).__name__}: {e}",
                    pytrace=False)

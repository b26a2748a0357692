import pytest

# Plain assert in the shared helpers gets the same failure introspection as in test modules.
pytest.register_assert_rewrite("tests.helpers", "tests.triton_helpers")

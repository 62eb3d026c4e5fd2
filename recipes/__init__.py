"""Built-in recipes. Importing this package registers them (llmcore finds it through the
`llmcore.recipes` entry point in pyproject.toml)."""

from recipes import probe  # noqa: F401
from recipes import pause  # noqa: F401
from recipes import forgetting, sam  # noqa: F401
from recipes import future_summary  # noqa: F401
from recipes import distill  # noqa: F401
from recipes import safety  # noqa: F401
from recipes import mode_conditioning  # noqa: F401

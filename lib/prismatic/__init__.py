"""prismatic: gradient diversity (G-Vendi) of LLM training data on Spark + Delta."""

__version__ = "0.1.0"

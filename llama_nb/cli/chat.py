def chat() -> None:
    """stub"""

"""Pricing: integer nano-USD per million tokens from genai-prices (bundled, offline), the user's
overrides and an imported OpenRouter catalog; actual costs, proven upper bounds, token bounds."""

from agentguard_otel.pricing.book import PriceBook
from agentguard_otel.pricing.estimate import (
    FIXED_OVERHEAD,
    IMAGE_TOKEN_BOUND,
    PER_ITEM_OVERHEAD,
    actual_cost_nano,
    bound_cost_nano,
    input_token_bound,
)
from agentguard_otel.pricing.openrouter import CATALOG_FILE, sync_openrouter_catalog
from agentguard_otel.pricing.prices import ModelPrice, PriceTier, TokenUsage, fallback_price

__all__ = [
    "CATALOG_FILE",
    "FIXED_OVERHEAD",
    "IMAGE_TOKEN_BOUND",
    "PER_ITEM_OVERHEAD",
    "ModelPrice",
    "PriceBook",
    "PriceTier",
    "TokenUsage",
    "actual_cost_nano",
    "bound_cost_nano",
    "fallback_price",
    "input_token_bound",
    "sync_openrouter_catalog",
]

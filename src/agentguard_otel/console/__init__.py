"""``agentguard serve``: a local, read-only console over a ledger and receipt logs (spend per tenant,
recent decisions, each receipt with its verification), its JSON API, and the receipt readers that
``agentguard verify --trace`` shares."""

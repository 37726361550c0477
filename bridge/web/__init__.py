"""HTTP endpoints besides the appservice transaction API: thirdparty, provisioning, metrics."""

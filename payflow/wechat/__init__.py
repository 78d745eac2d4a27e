"""WeChat Pay APIv3: crypto, client, notifications, bills."""

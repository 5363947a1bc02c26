"""Email: templated mail over SMTP, rate-limited, with bounces, suppressions and bulk sends."""

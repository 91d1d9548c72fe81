"""Pure report rules regulators run the programme with: targets and laggards, subsidies. No I/O."""

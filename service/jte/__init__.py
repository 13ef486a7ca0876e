"""JTE Panel's side: deliveries as JTE would send them (simulated, signed) and a sender that
posts them with JTE's retries."""

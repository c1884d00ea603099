//! The `status` and `renew` commands.

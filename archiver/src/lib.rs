//! natter archiver (being written).

//! natter filestore (being written).

//! PC platform device models.

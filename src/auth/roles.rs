//! Roles, ordered: each includes the ones below it.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// QIDO, WADO.
    Reader,
    /// + STOW.
    Writer,
    /// + DELETE, users, keys and sharing of its hospital.
    Admin,
    /// + hospitals, every hospital.
    Superadmin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            "superadmin" => Some(Role::Superadmin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
            Role::Superadmin => "superadmin",
        }
    }

    /// The highest of a list of role names (unknown names are ignored).
    pub fn highest<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Role> {
        names.into_iter().filter_map(Role::parse).max()
    }
}

//! The fake site's data: its users and the credentials that log in as them, and what the
//! writes change (watches, properties).

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

/// A user of the fake site with the credentials that log in as them.
#[derive(Debug, Clone, Copy)]
pub struct DemoUser {
    pub account_id: &'static str,
    pub email: &'static str,
    pub display_name: &'static str,
    /// The API token for Basic `email:token`.
    pub api_token: &'static str,
    /// The OAuth access token for `Bearer`.
    pub bearer: &'static str,
    pub admin: bool,
    pub groups: &'static [&'static str],
}

/// The fake site's users. Alice is a Confluence administrator, Bob is not, Carol cannot log in.
pub const DEMO_USERS: [DemoUser; 3] = [
    DemoUser {
        account_id: "712020:a11ce000-0000-4000-8000-000000000001",
        email: "alice@example.com",
        display_name: "Alice Admin",
        api_token: "alice-api-token",
        bearer: "alice-oauth-token",
        admin: true,
        groups: &[
            "confluence-users",
            "confluence-administrators",
            "site-admins",
        ],
    },
    DemoUser {
        account_id: "712020:b0b00000-0000-4000-8000-000000000002",
        email: "bob@example.com",
        display_name: "Bob Builder",
        api_token: "bob-api-token",
        bearer: "bob-oauth-token",
        admin: false,
        groups: &["confluence-users"],
    },
    DemoUser {
        account_id: "712020:ca501000-0000-4000-8000-000000000003",
        email: "carol@example.com",
        display_name: "Carol External",
        api_token: "",
        bearer: "",
        admin: false,
        groups: &[],
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum WatchKind {
    Content,
    Label,
    Space,
}

#[derive(Debug, Clone)]
pub(super) struct Property {
    pub(super) id: u64,
    pub(super) value: Value,
    pub(super) created: String,
    pub(super) modified: String,
}

#[derive(Default)]
pub(super) struct Data {
    pub(super) watches: HashSet<(&'static str, WatchKind, String)>,
    /// By (account id, key); a BTreeMap so listings come in key order.
    pub(super) properties: BTreeMap<(&'static str, String), Property>,
    pub(super) next_property_id: u64,
}

pub(super) struct Site {
    pub(super) base: String,
    /// User objects returned by bulk lookups (the quota-relevant unit).
    pub(super) bulk_objects: std::sync::atomic::AtomicU64,
    /// `parking_lot::Mutex`: every handler takes it briefly and never across an await.
    pub(super) data: parking_lot::Mutex<Data>,
}

impl Site {
    pub(super) fn new(base: String) -> Site {
        Site {
            base,
            bulk_objects: Default::default(),
            data: parking_lot::Mutex::new(Data {
                next_property_id: 1000,
                ..Data::default()
            }),
        }
    }

    pub(super) fn base(&self) -> &str {
        &self.base
    }
}

pub(super) fn find_user(account_id: &str) -> Option<&'static DemoUser> {
    DEMO_USERS
        .iter()
        .find(|u| u.account_id == account_id)
        .or_else(|| DIRECTORY.get(account_id))
}

/// How many directory accounts the site has besides the demo users (for bulk workloads).
pub const DIRECTORY_SIZE: usize = 5000;

/// The account id of directory account `n` (`n < DIRECTORY_SIZE`); they cannot log in.
pub fn directory_account(n: usize) -> String {
    format!("712020:d1000000-0000-4000-8000-{n:012}")
}

/// The directory, built once per process (its strings live as long as the process).
pub(super) static DIRECTORY: std::sync::LazyLock<
    std::collections::HashMap<&'static str, DemoUser>,
> = std::sync::LazyLock::new(|| {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    (0..DIRECTORY_SIZE)
        .map(|n| {
            let user = DemoUser {
                account_id: leak(directory_account(n)),
                email: leak(format!("user{n}@example.com")),
                display_name: leak(format!("Directory User{n}")),
                api_token: "",
                bearer: "",
                admin: false,
                groups: &["confluence-users"],
            };
            (user.account_id, user)
        })
        .collect()
});

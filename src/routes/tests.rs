use super::*;

fn op(method: Method, path: &str) -> Result<Operation, RouteError> {
    resolve(&method, path).map(|r| r.operation)
}

#[test]
fn route_index_is_the_position_in_all() {
    for (i, route) in Route::ALL.into_iter().enumerate() {
        assert_eq!(route.index(), i);
    }
}

#[test]
fn every_operation_resolves_from_its_template() {
    for operation in Operation::ALL {
        let path = operation
            .route()
            .template()
            .replace("{userId}", "acc-1")
            .replace("{key}", "k1")
            .replace("{contentId}", "123")
            .replace("{labelName}", "lbl")
            .replace("{spaceKey}", "SPC");
        let method = match operation.verb() {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Put => Method::PUT,
            Verb::Delete => Method::DELETE,
        };
        assert_eq!(op(method, &path), Ok(operation), "{path}");
    }
}

#[test]
fn table_has_twelve_templates_and_twenty_one_operations() {
    let ops: usize = Route::ALL.iter().map(|r| r.operations().len()).sum();
    assert_eq!((Route::ALL.len(), ops), (12, 21));
    for (i, op) in Operation::ALL.iter().enumerate() {
        assert_eq!(op.index(), i);
    }
}

#[test]
fn every_template_fits_the_segments_held_and_a_longer_path_is_no_route() {
    for route in Route::ALL {
        assert!(route.spec().segments.len() <= MAX_SEGMENTS, "{route:?}");
    }
    for path in [
        "/wiki/rest/api/user/acc-1/property/k1/more",
        "/wiki/rest/api/user/a/b/c/d/e/f/g/h",
    ] {
        assert_eq!(op(Method::GET, path), Err(RouteError::NotFound), "{path}");
    }
}

#[test]
fn fixed_segments_win_over_parameters() {
    assert_eq!(
        op(Method::GET, "/wiki/rest/api/user/current"),
        Ok(Operation::GetCurrentUser)
    );
    assert_eq!(
        op(Method::GET, "/wiki/rest/api/user/bulk/property"),
        Err(RouteError::NotFound)
    );
    assert_eq!(
        op(Method::GET, "/wiki/rest/api/user/abc/property"),
        Ok(Operation::GetUserProperties)
    );
}

#[test]
fn outside_the_prefix_is_not_found() {
    for path in [
        "/",
        "/wiki/rest/api/content",
        "/wiki/rest/api/users",
        "/wiki/rest/api/user/",
        "/wiki/rest/api/user/current/",
        "/wiki/rest/api/user/x/y",
    ] {
        assert_eq!(op(Method::GET, path), Err(RouteError::NotFound), "{path}");
    }
}

#[test]
fn undefined_methods_are_not_allowed_with_allow_header() {
    assert_eq!(
        op(Method::POST, "/wiki/rest/api/user/current"),
        Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" })
    );
    assert_eq!(
        op(Method::PATCH, "/wiki/rest/api/user/u/property/k"),
        Err(RouteError::MethodNotAllowed {
            allow: "GET, HEAD, PUT, POST, DELETE"
        })
    );
    for m in [Method::TRACE, Method::OPTIONS, Method::PUT] {
        assert!(matches!(
            op(m, "/wiki/rest/api/user/watch/space/S"),
            Err(RouteError::MethodNotAllowed { .. })
        ));
    }
}

#[test]
fn head_resolves_to_the_get_operation() {
    let r = resolve(&Method::HEAD, "/wiki/rest/api/user/anonymous").unwrap();
    assert_eq!((r.operation, r.head), (Operation::GetAnonymousUser, true));
}

#[test]
fn writes_invalidate_what_the_api_says_they_change() {
    let tags = |method, path| {
        resolve(&method, path)
            .unwrap()
            .invalidates()
            .into_iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tags(Method::POST, "/wiki/rest/api/user/watch/content/42"),
        ["watch:content:42"]
    );
    assert_eq!(
        tags(Method::DELETE, "/wiki/rest/api/user/a%3Ab/property/k"),
        ["property:a:b:k", "properties:a:b"]
    );
    assert!(tags(Method::GET, "/wiki/rest/api/user/watch/content/42").is_empty());
    // A read observes exactly the tag its writes invalidate.
    let read = resolve(&Method::GET, "/wiki/rest/api/user/a:b/property").unwrap();
    assert_eq!(read.resource_tag().unwrap().to_string(), "properties:a:b");
    let read = resolve(&Method::GET, "/wiki/rest/api/user/watch/space/ENG").unwrap();
    assert_eq!(read.resource_tag().unwrap().to_string(), "watch:space:ENG");
    assert!(
        resolve(&Method::GET, "/wiki/rest/api/user/current")
            .unwrap()
            .resource_tag()
            .is_none()
    );
}

#[test]
fn the_allow_header_names_exactly_the_routes_methods() {
    for route in Route::ALL {
        let mut methods = vec!["GET", "HEAD"];
        for operation in route.operations() {
            let method = match operation.verb() {
                Verb::Get => continue,
                Verb::Post => "POST",
                Verb::Put => "PUT",
                Verb::Delete => "DELETE",
            };
            methods.push(method);
        }
        let mut allowed: Vec<&str> = route.allow().split(", ").collect();
        allowed.sort_unstable();
        methods.sort_unstable();
        assert_eq!(allowed, methods, "{}", route.name());
        for operation in route.operations() {
            assert_eq!(operation.route(), route, "{}", operation.id());
        }
    }
}

#[test]
fn tags_read_back_as_written() {
    let a = "712020:a11ce000-0000-4000-8000-000000000001";
    for text in [
        "route:memberof".to_owned(),
        "watch:space:ENG".to_owned(),
        "watch:content:42".to_owned(),
        format!("property:{a}:my-key"),
        format!("properties:{a}"),
    ] {
        let tag: Tag = text.parse().unwrap();
        assert_eq!(tag.to_string(), text);
    }
    assert_eq!(
        format!("property:{a}:k").parse::<Tag>(),
        Ok(Tag::Property {
            user: a.to_owned(),
            key: "k".to_owned()
        })
    );
    for bad in [
        "",
        "route:nope",
        "watch:page:1",
        "watch:space:",
        "property:k",
        "anything",
    ] {
        assert!(bad.parse::<Tag>().is_err(), "{bad}");
    }
}

#[test]
fn params_are_decoded_and_validated() {
    let r = resolve(&Method::GET, "/wiki/rest/api/user/a%3Ab/property/my-key_1").unwrap();
    assert_eq!(r.param("userId"), Some("a:b"));
    assert_eq!(r.param("key"), Some("my-key_1"));
    for bad in [
        "/wiki/rest/api/user/u/property/bad.key",
        "/wiki/rest/api/user/u/property/bad%20key",
        "/wiki/rest/api/user/a%2Fb/property",
        "/wiki/rest/api/user/%2e%2e/property",
        "/wiki/rest/api/user/..%2f/property",
        "/wiki/rest/api/user/a%00b/property",
        "/wiki/rest/api/user/%ff/property",
        "/wiki/rest/api/user/watch/label/%0a",
        "/wiki/rest/api/user/%zz/property",
        "/wiki/rest/api/user/watch/space/ab%4",
    ] {
        assert!(
            matches!(
                resolve(&Method::GET, bad),
                Err(RouteError::InvalidParam { .. })
            ),
            "{bad}"
        );
    }
}

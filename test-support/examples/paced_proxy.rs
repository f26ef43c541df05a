fn main() {
    let args: Vec<String> = std::env::args().collect();
    let p = strata_test_support::Proxy::start_paced(&args[1], strata_test_support::Mode::Pass, args[2].parse().unwrap());
    println!("{}", p.addr);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

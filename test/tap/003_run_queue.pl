# The run queue: with max_worker_processes = 8 and etl_exec.max_workers = 4,
# 50 runs of 10 jobs started at once all succeed, never more than 4 at once,
# every table exact; a restart with 20 runs queued loses none of them;
# wait := true waits through the queue, whose deadline counts from the start;
# a queued run shows its position and can be cancelled.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

$ENV{PYTHON} ||= 'python3';
$ENV{MOCK_API_SCRIPT} ||= 'test/mock_api.py';

my $mock_port = 19200 + int(rand(500));
my $mock = IPC::Run::start([ $ENV{PYTHON}, $ENV{MOCK_API_SCRIPT}, '--port', $mock_port ],
	'>', \my $mock_out, '2>', \my $mock_err);
for (1 .. 50) { last if $mock_out =~ /listening/; $mock->pump_nb; select(undef, undef, undef, 0.1); }
like($mock_out, qr/listening/, 'mock API started');
my $api = "http://127.0.0.1:$mock_port/odata/Patients";

my $node = PostgreSQL::Test::Cluster->new('queue');
$node->init;
$node->append_conf('postgresql.conf',
	"max_worker_processes = 8\netl_exec.max_workers = 4\nmax_connections = 120\n");
$node->start;

# jobs 1..10 load 500 records each (upsert, so every run leaves the same
# table); jobs 11..14 are slow (3 pages of 1 s)
my $setup = "CREATE EXTENSION etl_exec;\n";
for my $j (1 .. 14)
{
	my ($n, $delay) = $j <= 10 ? (500, 40) : (200, 1000);
	$setup .= qq{
		CREATE TABLE q_$j (patientid int PRIMARY KEY, name text);
		INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size, load_mode, key_columns,
		                         allow_concurrent_runs)
		VALUES ($j, 'q$j', '$api?n=$n&delay_ms=$delay', 'q_$j', 100, 'upsert', '{patientid}', true);
	};
}
$node->safe_psql('postgres', $setup);

sub wait_until
{
	my ($sql, $what, $timeout) = @_;
	$timeout //= 180;
	for (1 .. $timeout * 10)
	{
		return 1 if $node->safe_psql('postgres', $sql) eq 't';
		select(undef, undef, undef, 0.1);
	}
	die "timed out waiting for $what";
}

sub check_tables
{
	my ($what, @jobs) = @_;
	for my $j (@jobs)
	{
		my $n = $j <= 10 ? 500 : 200;
		is($node->safe_psql('postgres', "SELECT count(*), count(DISTINCT patientid), sum(patientid) FROM q_$j"),
			"$n|$n|" . ($n * ($n + 1) / 2), "$what: table q_$j exact");
	}
}

# the most runs that ever ran at once, from every run's segments
my $max_at_once = q{
	WITH s AS (SELECT (seg ->> 'started_at')::timestamptz AS st, (seg ->> 'ended_at')::timestamptz AS en
	           FROM dw_etl_runs r, jsonb_array_elements(r.run_context -> 'segments') seg),
	     ev AS (SELECT st AS t, 1 AS d FROM s UNION ALL SELECT en, -1 FROM s)
	SELECT max(c) FROM (SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS c FROM ev) x};

# 1. 50 runs of 10 jobs, started at once from 50 sessions
my @calls;
for my $i (0 .. 49)
{
	my $job = 1 + $i % 10;
	push @calls, IPC::Run::start(
		[ 'psql', '-X', '-At', '-d', $node->connstr('postgres'), '-c', "SELECT etl_execute_job($job)" ],
		'>', \my $out, '2>', \my $err);
}
my $started = 0;
for my $h (@calls) { $started++ if $h->finish; }
is($started, 50, '50 runs started at once: every call returned a run');
wait_until("SELECT count(*) = 0 FROM dw_etl_runs WHERE status IN ('queued', 'running')", 'the 50 runs');
is($node->safe_psql('postgres', "SELECT status, count(*) FROM dw_etl_runs GROUP BY status"),
	'succeeded|50', 'all 50 runs succeeded');
my $peak = $node->safe_psql('postgres', $max_at_once);
cmp_ok($peak, '<=', 4, "never more than etl_exec.max_workers runs at once (at most $peak)");
cmp_ok($peak, '>=', 2, 'runs did run side by side');
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM dw_etl_runs WHERE segment_started_at > started_at"),
	'>=', 10, 'runs that did not fit waited in the queue');
check_tables('50 runs', 1 .. 10);

# 2. a restart with 20 runs queued loses none
$node->safe_psql('postgres', 'TRUNCATE ' . join(', ', map { "q_$_" } 1 .. 14));
my $before = $node->safe_psql('postgres', 'SELECT max(run_id) FROM dw_etl_runs');
$node->safe_psql('postgres', "SELECT etl_execute_job(j) FROM generate_series(11, 14) j");
wait_until("SELECT count(*) = 4 FROM dw_etl_runs WHERE status = 'running' AND run_id > $before", 'four runs running');
$node->safe_psql('postgres', "SELECT etl_execute_job(1 + j % 10) FROM generate_series(0, 19) j");
is($node->safe_psql('postgres', "SELECT count(*) FROM dw_etl_runs WHERE status = 'queued' AND run_id > $before"),
	'20', '20 runs queued behind the 4 running ones');
$node->restart;
is($node->safe_psql('postgres', "SELECT count(*) FROM dw_etl_runs WHERE status = 'queued' AND run_id > $before"),
	'20', 'after a restart the 20 runs are still queued');
for (1 .. 120)
{
	$node->safe_psql('postgres', 'SELECT count(*) FROM etl_resume_pending()');
	last if $node->safe_psql('postgres',
		"SELECT count(*) = 24 FROM dw_etl_runs WHERE status = 'succeeded' AND run_id > $before") eq 't';
	sleep 1;
}
is($node->safe_psql('postgres', "SELECT count(*) FROM dw_etl_runs WHERE status = 'succeeded' AND run_id > $before"),
	'24', 'etl_resume_pending started them: all 24 runs succeeded');
cmp_ok($node->safe_psql('postgres', $max_at_once), '<=', 4, 'still never more than 4 at once');
check_tables('after the restart', 1 .. 14);

# 3. one slot: wait := true through the queue, its position, a cancel
$node->safe_psql('postgres', "ALTER SYSTEM SET etl_exec.max_workers = 1; SELECT pg_reload_conf();");
$node->safe_psql('postgres', 'TRUNCATE q_1, q_2, q_11');
my $slow = $node->safe_psql('postgres', 'SELECT etl_execute_job(11)');
wait_until("SELECT status = 'running' FROM dw_etl_runs WHERE run_id = $slow", 'the slow run');
# a timeout of 2 s, behind a run of 3 s: its deadline counts from its start
my $waiter = IPC::Run::start(
	[ 'psql', '-X', '-At', '-d', $node->connstr('postgres'), '-c',
	  'SELECT etl_execute_job(1, timeout := 2, wait := true)' ],
	'>', \my $waited_out, '2>', \my $waited_err);
wait_until("SELECT count(*) = 1 FROM etl_run_progress WHERE job_id = 1 AND status = 'queued'", 'the queued run');
my $queued = $node->safe_psql('postgres', 'SELECT etl_execute_job(2)');
is($node->safe_psql('postgres',
		"SELECT string_agg(job_id || ':' || status || ':' || coalesce(queue_position::text, '-'), ' ' ORDER BY run_id)
		 FROM etl_run_progress"),
	'11:running:- 1:queued:1 2:queued:2', 'etl_run_progress shows the queue and each position');
is($node->safe_psql('postgres', "SELECT etl_cancel_run($queued)"), 't', 'a queued run can be cancelled');
is($node->safe_psql('postgres', "SELECT status, pages_fetched FROM dw_etl_runs WHERE run_id = $queued"),
	'cancelled|0', 'it left the queue without running');
ok($waiter->finish, 'wait := true returned once the queued run succeeded');
my $waited_id = $waited_out;
chomp $waited_id;
is($node->safe_psql('postgres', "SELECT status FROM dw_etl_runs WHERE run_id = $waited_id"), 'succeeded',
	'the queued run with a 2 s timeout succeeded after waiting behind a 3 s run');
is($node->safe_psql('postgres', 'SELECT count(*) FROM q_1'), '500', 'and loaded its table');
is($node->safe_psql('postgres', 'SELECT count(*) FROM q_2'), '0', 'the cancelled run loaded nothing');

$node->stop;
$mock->kill_kill;
done_testing();

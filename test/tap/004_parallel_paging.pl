# Parallel paging through kills and restarts: a run with 8 requests in
# flight whose worker is SIGKILLed (the postmaster restarts the cluster) or
# whose server stops at once, resumed -- and killed again mid-resume --
# ends with every record exactly once, for offset and page paging alike.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Digest::MD5 qw(md5_hex);
use File::Basename qw(dirname);
use Time::HiRes qw(sleep);

$ENV{PYTHON} ||= 'python3';
$ENV{MOCK_API_SCRIPT} ||= 'test/mock_api.py';
my $mock_dir = dirname($ENV{MOCK_API_SCRIPT});

my $n = 20000;
my $mock_port = 18700 + int(rand(500));
my $mock = IPC::Run::start([ $ENV{PYTHON}, $ENV{MOCK_API_SCRIPT}, '--port', $mock_port ],
	'>', \my $mock_out, '2>', \my $mock_err);
for (1 .. 50) { last if $mock_out =~ /listening/; $mock->pump_nb; select(undef, undef, undef, 0.1); }
like($mock_out, qr/listening/, 'mock API started');

my @names = split /\n/, `$ENV{PYTHON} -c "import sys; sys.path.insert(0, '$mock_dir'); import mock_api; [print(mock_api.record(i)['Name'].replace(chr(10), ' ')) for i in range(1, $n + 1)]"`;
is(scalar(@names), $n, 'expected names generated');
my $expected_md5 = md5_hex(join("\n", map { ($_ + 1) . '|' . $names[$_] } 0 .. $n - 1));

my $node = PostgreSQL::Test::Cluster->new('parallel');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 8\nrestart_after_crash = on\n");
$node->start;
# 200 pages of 100 records at 150 ms each, 8 in flight: ~4 s a run
$node->safe_psql('postgres', qq{
	CREATE EXTENSION etl_exec;
	CREATE TABLE p_offset (patientid int PRIMARY KEY, name text);
	CREATE TABLE p_page (patientid int PRIMARY KEY, name text);
	INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size, concurrency,
	                         checkpoint_interval_seconds, pagination_options)
	VALUES (1, 'offset', 'http://127.0.0.1:$mock_port/odata/Patients?n=$n&delay_ms=150', 'p_offset', 100, 8, 0,
	        '{"total_path": "\$.\\"\@odata.count\\""}');
	INSERT INTO dw_etl_jobs (job_id, name, url, target_table, pagination, page_size, concurrency,
	                         checkpoint_interval_seconds, records_path, pagination_options)
	VALUES (2, 'page', 'http://127.0.0.1:$mock_port/paged/Patients?n=$n&delay_ms=150', 'p_page', 'page', 100, 8, 0,
	        '\$.items[*]', '{"page_param": "page", "limit_param": "per_page", "total_path": "\$.total"}');
});

sub wait_loaded
{
	my ($run_id, $min) = @_;
	$node->poll_query_until('postgres',
		"SELECT records_loaded >= $min AND status = 'running' FROM dw_etl_runs WHERE run_id = $run_id")
	  or die "run $run_id did not get going";
}

sub kill_worker
{
	my ($run_id) = @_;
	my $pid = $node->safe_psql('postgres', "SELECT worker_pid FROM dw_etl_runs WHERE run_id = $run_id");
	# the worker commits asynchronously: let the WAL writer (every 200 ms)
	# put what it committed on disk before the crash
	sleep 0.5;
	kill 'KILL', $pid;
	sleep 1;
	$node->poll_query_until('postgres', 'SELECT true') or die 'server did not come back';
}

sub check_exact
{
	my ($table, $what) = @_;
	is($node->safe_psql('postgres', "SELECT count(*), count(DISTINCT patientid) FROM $table"),
		"$n|$n", "$what: every record once");
	is($node->safe_psql('postgres',
			"SELECT md5(string_agg(patientid || '|' || replace(name, E'\\n', ' '), E'\\n' ORDER BY patientid)) FROM $table"),
		$expected_md5, "$what: contents match the source");
}

sub loaded_matches_checkpoint
{
	my ($run_id, $table, $what) = @_;
	my ($loaded, $rows, $skip) = split /\|/, $node->safe_psql('postgres',
		"SELECT records_loaded, (SELECT count(*) FROM $table), (SELECT skip FROM etl_get_checkpoint($run_id)) "
		  . "FROM dw_etl_runs WHERE run_id = $run_id");
	cmp_ok($loaded, '>', 0, "$what: records were checkpointed before it");
	is($rows, $loaded, "$what: the table holds exactly the checkpointed records");
	is($skip, $loaded, "$what: the checkpoint continues right after them");
}

for my $job ([ 1, 'p_offset', 'offset' ], [ 2, 'p_page', 'page' ])
{
	my ($job_id, $table, $style) = @$job;

	# SIGKILL mid-run, then again in the middle of the resume
	my $run = $node->safe_psql('postgres', "SELECT etl_execute_job($job_id, timeout := 600)");
	wait_loaded($run, 3000);
	kill_worker($run);
	is($node->safe_psql('postgres', "SELECT etl_wait_run($run, 0)"), 'interrupted', "$style: killed run is interrupted");
	loaded_matches_checkpoint($run, $table, "$style, SIGKILL");
	my $before = $node->safe_psql('postgres', "SELECT records_loaded FROM dw_etl_runs WHERE run_id = $run");
	$node->safe_psql('postgres', "SELECT etl_resume_run($run)");
	wait_loaded($run, $before + 3000);
	kill_worker($run);
	is($node->safe_psql('postgres', "SELECT etl_wait_run($run, 0)"), 'interrupted', "$style: killed again mid-resume");
	loaded_matches_checkpoint($run, $table, "$style, second SIGKILL");

	# an immediate shutdown in the middle of the next resume
	$before = $node->safe_psql('postgres', "SELECT records_loaded FROM dw_etl_runs WHERE run_id = $run");
	$node->safe_psql('postgres', "SELECT etl_resume_run($run)");
	wait_loaded($run, $before + 2000);
	sleep 0.5;						# (as in kill_worker)
	$node->stop('immediate');
	$node->start;
	is($node->safe_psql('postgres', "SELECT etl_wait_run($run, 0)"), 'interrupted', "$style: stopped server's run is interrupted");
	loaded_matches_checkpoint($run, $table, "$style, immediate shutdown");

	is($node->safe_psql('postgres', 'SELECT etl_resume_pending()'), $run, "$style: etl_resume_pending resumes it");
	is($node->safe_psql('postgres', "SELECT etl_wait_run($run)"), 'succeeded', "$style: the resumed run succeeds");
	is($node->safe_psql('postgres', "SELECT resume_count FROM dw_etl_runs WHERE run_id = $run"), '3', "$style: three resumes");
	check_exact($table, "$style with 8 in flight");
}

$node->stop;
$mock->kill_kill;
done_testing();
